"""The seam between the framework-neutral core and a framework (PyTorch, Keras).

Algorithms never touch a framework's module tree, hooks or files: they ask the adapter of
the model's framework. An adapter is found from the model's class without importing any
framework the model does not come from.

Example:

>>> from slimkit.compression.adapter import framework_of
>>> framework_of(object())
Traceback (most recent call last):
...
slimkit.errors.UnsupportedModelError: Expected a torch.nn.Module or a keras.Model. Received: model of type object
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from slimkit.compression.channels import ChannelAxis
from slimkit.compression.config import LayerRef
from slimkit.errors import UnsupportedModelError

# framework name -> module defining ``ADAPTER``; the root package of a model's class picks the entry.
_ADAPTER_MODULES = {
    "torch": "slimkit.frameworks.torch.adapter",
    "keras": "slimkit.frameworks.tensorflow.adapter",
}
_ROOT_PACKAGES = {"torch": "torch", "keras": "keras", "tf_keras": "keras", "tensorflow": "keras"}


class Handle(Protocol):
    def remove(self) -> None: ...


class FrameworkAdapter(Protocol):
    """What the core needs from a framework. ``layer`` arguments are :class:`slimkit.compression.Layer`."""

    name: str

    def discover(self, model: Any) -> list[LayerRef]: ...
    def known_types(self) -> set[str]: ...
    def default_types(self, role: str) -> tuple[str, ...]: ...
    def has_weight(self, module: Any) -> bool: ...
    def out_axis(self, module: Any, kernel: str | None = None) -> ChannelAxis: ...
    def activation_axis(self, module: Any) -> int: ...
    def channel_groups(self, model: Any, dummy_input: Any) -> list[Any]: ...
    def channel_dependencies(self, model: Any, dummy_input: Any) -> tuple[list[Any], Any]: ...
    def weight(self, layer: Any, masked: bool = True) -> Any: ...
    def bias(self, layer: Any, masked: bool = True) -> Any: ...
    def to_numpy(self, tensor: Any) -> np.ndarray: ...
    def state_tensor(self, array: np.ndarray) -> Any: ...
    def state_array(self, value: Any) -> np.ndarray: ...
    def wrap(self, model: Any, layers: list[Any]) -> None: ...
    def unwrap(self, model: Any, layers: list[Any]) -> None: ...
    def set_masks(self, layer: Any, weight_mask: np.ndarray, bias_mask: np.ndarray | None) -> None: ...
    def get_masks(self, layer: Any) -> tuple[Any, Any]: ...
    def installed_weight_mask(self, layer: Any) -> Any: ...
    def add_output_hook(self, layer: Any, fn: Callable[[np.ndarray], None]) -> Handle: ...
    def save_weights(self, model: Any, layers: list[Any], path: str) -> None: ...
    def save_masks(self, masks: dict[str, dict[str, Any]], path: str) -> None: ...
    def export_onnx(self, model: Any, layers: list[Any], path: str, example: Any, device: Any) -> None: ...


def framework_of(model: Any) -> str:
    """Name of the framework ``model`` belongs to: ``'torch'`` or ``'keras'``."""
    for cls in type(model).__mro__:
        framework = _ROOT_PACKAGES.get(cls.__module__.split(".")[0])
        if framework:
            return framework
    raise UnsupportedModelError(
        f"Expected a torch.nn.Module or a keras.Model. Received: model of type {type(model).__name__}")


def adapter_for(model: Any) -> FrameworkAdapter:
    """The adapter instance for ``model``'s framework (its module is imported on first use)."""
    return importlib.import_module(_ADAPTER_MODULES[framework_of(model)]).ADAPTER
