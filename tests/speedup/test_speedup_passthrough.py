"""Ops that carry no pruned channel pass through speedup; an unknown op that consumes one stops it with an
``exclude`` that works."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit import UnsupportedOpError
from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.speedup import ModelSpeedup
from slimkit.speedup.registry import module_rule
from tests.speedup.helpers_speedup import masked_copy


def _keep_first(module: nn.Module, kept: int) -> dict:
    keep = torch.zeros(module.weight.shape[0])
    keep[:kept] = 1.0
    shape = [-1] + [1] * (module.weight.dim() - 1)
    return {"weight": keep.view(shape).expand_as(module.weight).clone(), "bias": keep.clone()}


class Passthrough(nn.Module):
    """conv1 -> relu -> conv2, scaled by numbers computed from positions with ops speedup has no rule for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.conv2 = nn.Conv2d(6, 4, 1)
        self.drop = nn.Dropout(0.1, inplace=True)

    def forward(self, x):
        h = self.drop(torch.relu(self.conv1(x)))
        steps = torch.diff(torch.arange(x.shape[-1], dtype=torch.float32))  # positions: no rule, no channel
        h = torch.max(h, torch.zeros_like(h))  # element-wise max of two tensors, not a reduction
        return self.conv2(h) * steps.sum()


def test_ops_without_pruned_channels_pass_through():
    model = Passthrough().eval()
    x = torch.randn(1, 3, 8, 8)
    masks = {"conv1": _keep_first(model.conv1, 2)}
    reference = masked_copy(model, masks)
    ModelSpeedup(model, x, masks).speedup_model()
    assert (model.conv1.out_channels, model.conv2.in_channels) == (2, 2)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=0, atol=1e-6)


class ChannelDiff(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.conv2 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return torch.diff(self.conv2(torch.relu(self.conv1(x))), dim=1)


def test_unknown_op_on_pruned_channels_names_the_exclude_that_works():
    model = ChannelDiff().eval()
    x = torch.randn(1, 3, 8, 8)
    config = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
    pruner = L1FilterPruner(model, config)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedOpError) as failure:
        ModelSpeedup(model, x, masks).speedup_model()
    message = str(failure.value)
    assert "aten::diff" in message and "'<root>'" in message
    assert "{'exclude': True, 'op_names': ['conv2']}" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    pruner = L1FilterPruner(model, config + [{"exclude": True, "op_names": ["conv2"]}])  # the step it named
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    reference = masked_copy(model, masks)
    ModelSpeedup(model, x, masks).speedup_model()
    assert (model.conv1.out_channels, model.conv2.in_channels, model.conv2.out_channels) == (3, 3, 4)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=0, atol=1e-6)


class Depthwise(nn.Conv2d):
    """A conv subclass, as model code defines them (Hugging Face's EfficientNetDepthwiseConv2d)."""


def test_module_subclass_is_rebuilt_by_its_base_rule():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Depthwise(4, 4, 3, groups=4, padding=1), nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(1, 3, 6, 6)
    masks = {"0": _keep_first(model[0], 3)}
    reference = masked_copy(model, masks)
    ModelSpeedup(model, x, masks).speedup_model()
    assert module_rule(model[1]) is module_rule(nn.Conv2d(1, 1, 1))
    assert type(model[1]) is Depthwise and (model[1].in_channels, model[1].groups) == (3, 3)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=0, atol=1e-6)
