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

from slimkit.compression.composition import stacking_targets
from slimkit.compression.config import LayerRef
from slimkit.errors import ConfigError
from slimkit.frameworks.torch import layout
from slimkit.frameworks.torch.free_parameter import FreeParameter, ParameterMask, parameter_refs, unhook_copy
from slimkit.frameworks.torch.wrapper import CompressionWrapper
from slimkit.utils.files import atomic_path


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at qualified ``name`` with ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _tensor_users(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """id(parameter) -> every ``(module path, module, attribute)`` holding it (a wrapped layer: its wrapper's path)."""
    users: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, CompressionWrapper):
            continue
        parent, _, attr = path.rpartition(".")
        if attr == "module" and isinstance(model.get_submodule(parent), CompressionWrapper):
            path = parent
        for kind, value in module._parameters.items():
            if value is not None and not any(user[1] is module for user in users.get(id(value), ())):
                users.setdefault(id(value), []).append((path, module, kind))
    return users


def _refuse_tied_masks(model: nn.Module, layers: list[Any]) -> None:
    """Raise if baking a layer's mask into a tensor it shares would change another user of that tensor."""
    by_module = {id(layer.module): layer for layer in layers}
    users = _tensor_users(model)
    for layer in layers:
        for kind in ("weight", "bias"):
            mask = getattr(layer.wrapper, f"{kind}_mask", None)
            value = layer.wrapper.param(kind)
            if mask is None or not isinstance(value, torch.Tensor) or bool((mask == 1).all()):
                continue
            for path, module, attr in users.get(id(value), ()):
                other = by_module.get(id(module))
                other_mask = getattr(other.wrapper, f"{attr}_mask", None) if other is not None else None
                if module is getattr(layer.module, "owner", layer.module) or (
                        other_mask is not None and torch.equal(other_mask, mask)):
                    continue
                raise ConfigError(
                    f"Layer {layer.name!r} shares its {kind} tensor with {path!r} ({type(module).__name__}.{attr}; "
                    f"tied weights, such as an output head and the token embedding). The mask applies where "
                    f"{layer.name!r} uses the tensor; writing it into the shared tensor would also change {path!r}, "
                    f"and the file loads into a model that ties them again. Expected the same mask on every user: "
                    f"exclude the layer ({{'exclude': True, 'op_names': [{layer.name!r}]}}), select {path!r} with the "
                    f"same config (a weight-magnitude pruner then gives it the same mask), or untie the weights "
                    f"before compressing (Hugging Face: config.tie_word_embeddings=False). Received: tied "
                    f"{layer.name}.{kind} and {path}.{attr}")


def wrapper_at(model: nn.Module, name: str) -> CompressionWrapper | None:
    """The slimkit wrapper standing at qualified ``name`` in ``model``, or None for a plain layer."""
    module = model.get_submodule(name)
    return module if isinstance(module, CompressionWrapper) else None


def refuse_read_by_parent(layers: list[Any]) -> None:
    """Raise before anything is wrapped if a layer's parent reads its parameters instead of calling it."""
    for layer in layers:
        if layout.read_by_parent(layer.module):
            parent = layer.name.rpartition(".")[0] or "the model"
            raise ConfigError(
                f"Layer {layer.name!r} ({layer.type}) is never called: its parent {parent!r} computes with its "
                f"weight directly (nn.MultiheadAttention does), so a mask or fake quantization around it would not "
                f"apply. Expected layers that run their own forward: exclude it ({{'exclude': True, 'op_names': "
                f"[{layer.name!r}]}}). Received: layer {layer.name!r}")


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
            refs.append(LayerRef(name, type(module).__name__, module, layout.layer_types(module),
                                 layout.kernel_of(module)))
        return refs

    @functools.cache  # noqa: B019 - the adapter is a process-wide singleton
    def known_types(self) -> set[str]:
        return {name for name, obj in vars(nn).items() if isinstance(obj, type) and issubclass(obj, nn.Module)}

    def default_types(self, role: str) -> tuple[str, ...]:
        return layout.ROLES.get(role, ())

    def has_weight(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, layout.kernel_of(module) or "weight", None), torch.Tensor)

    def out_axis(self, module: nn.Module, kernel: str | None = None) -> int:
        return module.axis if isinstance(module, FreeParameter) else layout.out_axis(module)

    def activation_axis(self, module: nn.Module) -> int:
        """Channel axis of the layer's output (NCHW / NC...): 1."""
        return 1

    def channel_groups(self, model: nn.Module, dummy_input: Any) -> list[Any]:
        """Layers whose output channels are coupled, from the graph traced on ``dummy_input``."""
        return self.channel_dependencies(model, dummy_input)[0]

    def channel_dependencies(self, model: nn.Module, dummy_input: Any) -> tuple[list[Any], Any]:
        """:meth:`channel_groups` and the BatchNorm layers following output channels
        (:class:`slimkit.compression.followers.ChannelFollowers`), from one trace."""
        if dummy_input is None:
            raise ConfigError("dependency_aware=True traces a PyTorch model on its input. Expected "
                              "dummy_input=<an example input tensor>. Received: dummy_input=None")
        from slimkit.speedup.dependency import channel_dependencies

        return channel_dependencies(model, dummy_input)

    def weight(self, layer: Any, masked: bool = True) -> torch.Tensor:
        return self._param(layer, "weight", masked)

    def bias(self, layer: Any, masked: bool = True) -> torch.Tensor | None:
        return self._param(layer, "bias", masked)

    def _param(self, layer: Any, kind: str, masked: bool) -> torch.Tensor | None:
        name = layout.param_name(kind, layer.kernel)
        value = getattr(layer.module, name, None) if name else None
        if not isinstance(value, torch.Tensor):
            return None
        value = value.detach()
        mask = getattr(layer.wrapper, f"{kind}_mask", None) if masked else None
        return value * mask if mask is not None else value

    def to_numpy(self, tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().to("cpu", torch.float32).numpy() if tensor.is_floating_point() else (
            tensor.detach().cpu().numpy())

    def state_tensor(self, array: np.ndarray) -> torch.Tensor:
        """A checkpoint array as a CPU tensor of the same dtype (``torch.load(weights_only=True)`` reads it)."""
        return torch.from_numpy(array if array.flags.c_contiguous else np.array(array, order="C"))

    def state_array(self, value: Any) -> np.ndarray:
        """A checkpoint leaf back as numpy, dtype kept (the inverse of :meth:`state_tensor`)."""
        return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

    def parameter_refs(self, model: nn.Module, names: list[str], axes: dict[str, int]) -> list[LayerRef]:
        """Refs of the free parameters among ``names`` (``'<module>.<attribute>'``: a pruner masks them as followers;
        :mod:`slimkit.frameworks.torch.free_parameter`), their channels along ``axes[name]``."""
        return [LayerRef(name, "Parameter", ref) for name, ref in parameter_refs(model, names, axes).items()]

    def wrap(self, model: nn.Module, layers: list[Any]) -> None:
        free = [layer for layer in layers if isinstance(layer.module, FreeParameter)]
        layers = [layer for layer in layers if layer not in free]
        stacking_targets(layers, lambda layer: wrapper_at(model, layer.name))  # a pruner stacks on nothing
        refuse_read_by_parent(layers)
        for layer in layers:
            wrapper = CompressionWrapper(layer.module, layer.name, layer.kernel)
            wrapper.attached.append(layer)
            set_submodule(model, layer.name, wrapper)
            layer.wrapper = wrapper
        for layer in free:
            layer.wrapper = ParameterMask(layer.module)
            layer.wrapper.attached.append(layer)

    def unwrap(self, model: nn.Module, layers: list[Any]) -> None:
        for layer in layers:
            if isinstance(layer.module, FreeParameter):
                layer.wrapper.remove()
            else:
                set_submodule(model, layer.name, layer.module)
            layer.wrapper = None

    def set_masks(self, layer: Any, weight_mask: np.ndarray, bias_mask: np.ndarray | None) -> None:
        like = self._param(layer, "weight", masked=False)
        layer.wrapper.weight_mask = torch.as_tensor(weight_mask, dtype=like.dtype, device=like.device)
        if bias_mask is not None:
            layer.wrapper.bias_mask = torch.as_tensor(bias_mask, dtype=like.dtype, device=like.device)

    def get_masks(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        wrapper = layer.wrapper
        weight_mask = wrapper.weight_mask if wrapper.weight_mask is not None else torch.ones_like(
            self._param(layer, "weight", masked=False))
        return weight_mask.detach().clone(), (
            wrapper.bias_mask.detach().clone() if wrapper.bias_mask is not None else None)

    def installed_weight_mask(self, layer: Any) -> torch.Tensor | None:
        """The wrapper's weight mask itself (no copy), None while none is set."""
        return layer.wrapper.weight_mask

    def add_output_hook(self, layer: Any, fn: Callable[[np.ndarray], None]) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            fn(self.to_numpy(output))

        return layer.wrapper.register_forward_hook(hook)

    def baked_copy(self, model: nn.Module, layers: list[Any]) -> nn.Module:
        """A deep copy of ``model`` with plain layers whose weights have the masks multiplied in.

        Raises:
            ConfigError: a masked tensor is tied to another user (an output head sharing the token embedding)
                that does not apply the same mask: baking would change that user too.
        """
        _refuse_tied_masks(model, layers)
        clone = copy.deepcopy(model)
        for layer in layers:
            if isinstance(layer.module, FreeParameter):
                owner = clone.get_submodule(layer.name.rpartition(".")[0])
                unhook_copy(owner, layer.wrapper)
                if layer.wrapper.weight_mask is not None:
                    with torch.no_grad():
                        owner._parameters[layer.module.attribute].mul_(layer.wrapper.weight_mask)
                continue
            wrapper = clone.get_submodule(layer.name)
            module = wrapper.module
            with torch.no_grad():
                for kind in ("weight", "bias"):
                    mask, value = getattr(wrapper, f"{kind}_mask"), wrapper.param(kind)
                    if mask is not None and value is not None:
                        value.mul_(mask)
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

    def export_onnx(self, model: nn.Module, layers: list[Any], path: str, example: Any, device: Any) -> None:
        from slimkit.frameworks.torch.onnx_export import export_onnx

        export_onnx(self.baked_copy(model, layers), path, example, device)

    @property
    def quant_backend(self) -> Any:
        """Quantization support (ops seam, fake-quant wrappers, files): ``quant_backend.TorchQuantBackend``."""
        from slimkit.frameworks.torch.quant_backend import BACKEND

        return BACKEND


ADAPTER = TorchAdapter()
