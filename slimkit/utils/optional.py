"""Optional dependencies: import one, or say which slimkit extra installs it.

Every import of a package that a core install lacks (LiteRT, TensorFlow / Keras, ONNX, matplotlib)
goes through :func:`require`, so a missing one is a :class:`slimkit.errors.MissingDependencyError`
naming the extra of ``pyproject.toml`` to install, raised before anything is written.

Example:

>>> from slimkit.utils.optional import require
>>> require('onnx', 'ONNX export').__name__
'onnx'
>>> EXTRAS['ai_edge_litert']
'litert'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from slimkit.errors import MissingDependencyError

# top-level module -> the extra of pyproject.toml's [project.optional-dependencies] that installs it
# (tests/utils/test_optional.py checks this table against pyproject.toml).
EXTRAS = {
    "ai_edge_litert": "litert",
    "tensorflow": "tensorflow",
    "keras": "tensorflow",
    "onnx": "onnx",
    "onnxscript": "onnx",
    "onnxruntime": "onnx",
    "matplotlib": "plot",
}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (``'ai_edge_litert.interpreter'``) for ``feature`` (``'verify()'``).

    Raises:
        MissingDependencyError: the module (or one it imports) is not installed; the message names
            the extra, e.g. ``pip install 'slimkit[litert]'``.
    """
    top = module.partition(".")[0]
    extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{feature} needs {top!r}, which is not installed ({error}). "
            f"Install it with: pip install 'slimkit[{extra}]'") from None
