"""Free parameters on the channel axis: a module's own ``nn.Parameter`` that its forward combines with channels.

Model code keeps per-channel parameters outside any layer: ViT's ``cls_token`` (``1 x 1 x hidden``) concatenated
before the patches and its ``position_embeddings`` (``1 x positions x hidden``) added to them, ConvNeXt's
``layer_scale_parameter`` (``hidden``) multiplying a block's output, the ``weight`` of an RMSNorm written as separate
ops. Their last axis is the channel axis: each index ``c`` gets a channel variable of its own, role ``attribute`` of
the owning module, which the element-wise and movement rules couple with the channels it meets. A channel goes when
its set goes: the parameter then loses that index along its last axis (:func:`shrink_free_parameters`). Its values
are the masked parameter's (a mask for ``'<module>.<attribute>'``), so a pruned channel that is zero in the stream
and in the parameter is a zero channel.

Example:

>>> import torch
>>> from slimkit.speedup import ModelSpeedup
>>> class Scale(torch.nn.Module):
...     def __init__(self, channels):
...         super().__init__()
...         self.gamma = torch.nn.Parameter(torch.rand(channels) + 0.5)
...     def forward(self, x):
...         return self.gamma * x
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), Scale(6), torch.nn.Linear(6, 2)).eval()
>>> keep = torch.tensor([1.0, 0, 1, 1, 0, 1])
>>> masks = {'0': {'weight': keep[:, None].expand(6, 4).clone(), 'bias': keep}}
>>> model = ModelSpeedup(model, torch.randn(1, 4), masks).speedup_model()
>>> tuple(model[1].gamma.shape), model[2].in_features
((4,), 4)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.speedup.registry import module_rule
from slimkit.speedup.surgery import _clone, _index, _param

LAYER_PARAMETERS = ("weight", "bias")
"""Attributes that a module with a speedup rule consumes through its own operator (a conv's weight)."""


def free_parameter(model: nn.Module, name: str) -> tuple[str, str, nn.Module] | None:
    """``(module path, attribute, module)`` when the qualified parameter ``name`` is a free parameter with a channel
    axis (an ``nn.Parameter`` of at least one axis, its last axis longer than 1, not a weight or bias that a speedup
    rule of its module consumes, not on the model itself, which speedup cannot replace), else None."""
    path, _, attribute = name.rpartition(".")
    if not path:
        return None
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    value = module._parameters.get(attribute)
    if not isinstance(value, nn.Parameter) or value.dim() == 0 or value.shape[-1] < 2:
        return None
    if attribute in LAYER_PARAMETERS and module_rule(module) is not None:
        return None
    return path, attribute, module


def free_parameter_names(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{'<module>.<attribute>': shape}`` of every free parameter a mask may name (weights and biases, which a
    mask names by their module, apart)."""
    shapes = {}
    for path, module in model.named_modules():
        for attribute, value in module._parameters.items():
            name = f"{path}.{attribute}" if path else attribute
            if attribute not in LAYER_PARAMETERS and free_parameter(model, name) is not None:
                shapes[name] = tuple(value.shape)
    return shapes


def shrink_free_parameters(module: nn.Module, weight: torch.Tensor | None, bias: torch.Tensor | None,
                           keep: dict[str, Any], folds: dict[int, float], *,
                           values: dict[str, torch.Tensor]) -> nn.Module:
    """``module`` with each free parameter named in ``keep`` cut to its kept indices along the last axis; ``values``
    holds the masked parameters (the surgery rule the analysis binds for the module)."""
    clone = _clone(module)
    for attribute, kept in keep.items():
        value = module._parameters.get(attribute)
        if value is not None and attribute in values:
            clone._parameters[attribute] = _param(values[attribute][..., _index(kept, value.shape[-1])], value)
    return clone
