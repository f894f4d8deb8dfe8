"""PyTorch adapter: layer discovery, wrapping, masks, hooks and files for ``torch.nn.Module`` models.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.adapter import ADAPTER
>>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
>>> [(ref.name, ref.type) for ref in ADAPTER.discover(model)]
[('0', 'Conv2d'), ('1', 'ReLU')]
>>> ADAPTER.out_axis(torch.nn.ConvTranspose2d(2, 3, 3))
1
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.compression.adapter import refuse_wrapped
from slimkit.compression.config import LayerRef
from slimkit.errors import ConfigError
from slimkit.frameworks.torch.wrapper import CompressionWrapper
from slimkit.utils.files import atomic_path

_ROLES: dict[str, tuple[str, ...]] = {
    "weighted": ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear"),
    "batchnorm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    "linear": ("Linear",),
}


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at qualified ``name`` with ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


class TorchAdapter:
    """The :class:`slimkit.compression.adapter.FrameworkAdapter` for PyTorch."""

    name = "torch"

    def discover(self, model: nn.Module) -> list[LayerRef]:
        refs = []
        for name, module in model.named_modules():
            if not name or isinstance(module, CompressionWrapper):
                continue
            parent, _, attr = name.rpartition(".")
            if attr == "module" and isinstance(model.get_submodule(parent), CompressionWrapper):
                name = parent  # a layer wrapped by another compressor keeps its own name
            refs.append(LayerRef(name, type(module).__name__, module))
        return refs

    @functools.cache  # noqa: B019 - the adapter is a process-wide singleton
    def known_types(self) -> set[str]:
        return {name for name, obj in vars(nn).items() if isinstance(obj, type) and issubclass(obj, nn.Module)}

    def default_types(self, role: str) -> tuple[str, ...]:
        return _ROLES.get(role, ())

    def has_weight(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, "weight", None), torch.Tensor)

    def out_axis(self, module: nn.Module) -> int:
        return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0

    def activation_axis(self, module: nn.Module) -> int:
        """Channel axis of the layer's output (NCHW / NC...): 1."""
        return 1

    def channel_groups(self, model: nn.Module, dummy_input: Any) -> list[Any]:
        """Layers whose output channels are coupled, from the graph traced on ``dummy_input``."""
        if dummy_input is None:
            raise ConfigError("dependency_aware=True traces a PyTorch model on its input. Expected "
                              "dummy_input=<an example input tensor>. Received: dummy_input=None")
        from slimkit.speedup.dependency import channel_groups

        return channel_groups(model, dummy_input)

    def weight(self, layer: Any, masked: bool = True) -> torch.Tensor:
        return self._param(layer, "weight", masked)

    def bias(self, layer: Any, masked: bool = True) -> torch.Tensor | None:
        return self._param(layer, "bias", masked)

    def _param(self, layer: Any, kind: str, masked: bool) -> torch.Tensor | None:
        value = getattr(layer.module, kind, None)
        if not isinstance(value, torch.Tensor):
            return None
        value = value.detach()
        mask = getattr(layer.wrapper, f"{kind}_mask", None) if masked else None
        return value * mask if mask is not None else value

    def to_numpy(self, tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().to("cpu", torch.float32).numpy() if tensor.is_floating_point() else (
            tensor.detach().cpu().numpy())

    def wrap(self, model: nn.Module, layers: list[Any]) -> None:
        refuse_wrapped(layers, lambda layer: isinstance(model.get_submodule(layer.name), CompressionWrapper))
        for layer in layers:
            wrapper = CompressionWrapper(layer.module, layer.name)
            set_submodule(model, layer.name, wrapper)
            layer.wrapper = wrapper

    def unwrap(self, model: nn.Module, layers: list[Any]) -> None:
        for layer in layers:
            set_submodule(model, layer.name, layer.module)
            layer.wrapper = None

    def set_masks(self, layer: Any, weight_mask: np.ndarray, bias_mask: np.ndarray | None) -> None:
        like = layer.module.weight
        layer.wrapper.weight_mask = torch.as_tensor(weight_mask, dtype=like.dtype, device=like.device)
        if bias_mask is not None:
            layer.wrapper.bias_mask = torch.as_tensor(bias_mask, dtype=like.dtype, device=like.device)

    def get_masks(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        wrapper = layer.wrapper
        weight_mask = wrapper.weight_mask if wrapper.weight_mask is not None else torch.ones_like(
            layer.module.weight)
        return weight_mask.detach().clone(), (
            wrapper.bias_mask.detach().clone() if wrapper.bias_mask is not None else None)

    def add_output_hook(self, layer: Any, fn: Callable[[np.ndarray], None]) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            fn(self.to_numpy(output))

        return layer.wrapper.register_forward_hook(hook)

    def baked_copy(self, model: nn.Module, layers: list[Any]) -> nn.Module:
        """A deep copy of ``model`` with plain layers whose weights have the masks multiplied in."""
        clone = copy.deepcopy(model)
        for layer in layers:
            wrapper = clone.get_submodule(layer.name)
            module = wrapper.module
            with torch.no_grad():
                for kind in ("weight", "bias"):
                    mask = getattr(wrapper, f"{kind}_mask")
                    if mask is not None and getattr(module, kind, None) is not None:
                        getattr(module, kind).mul_(mask)
            set_submodule(clone, layer.name, module)
        return clone

    def save_weights(self, model: nn.Module, layers: list[Any], path: str) -> None:
        state = self.baked_copy(model, layers).state_dict()
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def save_masks(self, masks: dict[str, dict[str, Any]], path: str) -> None:
        with atomic_path(path) as tmp:
            torch.save({name: {k: (v.cpu() if v is not None else None) for k, v in entry.items()}
                        for name, entry in masks.items()}, tmp)

    def export_onnx(self, model: nn.Module, layers: list[Any], path: str, input_shape: Any, device: Any) -> None:
        from slimkit.frameworks.torch.onnx_export import export_onnx

        export_onnx(self.baked_copy(model, layers), path, input_shape, device)

    @property
    def quant_backend(self) -> Any:
        """Quantization support (ops seam, fake-quant wrappers, files): ``quant_backend.TorchQuantBackend``."""
        from slimkit.frameworks.torch.quant_backend import BACKEND

        return BACKEND


ADAPTER = TorchAdapter()
