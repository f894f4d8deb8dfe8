"""Small helpers shared across slimkit (file writing, model statistics)."""

from slimkit.utils.files import atomic_path

__all__ = ["atomic_path"]
