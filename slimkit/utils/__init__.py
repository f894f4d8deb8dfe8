"""Small helpers shared across slimkit (file writing, model statistics).

``count_flops_params`` needs PyTorch and is imported on first use, so importing
``slimkit.utils`` stays framework-free.
"""

from typing import Any

from slimkit.utils.files import atomic_path

__all__ = ["atomic_path", "count_flops_params"]


def __getattr__(name: str) -> Any:
    if name == "count_flops_params":
        from slimkit.utils.flops import count_flops_params

        return count_flops_params
    raise AttributeError(f"module 'slimkit.utils' has no attribute {name!r}")
