"""Dependency-aware filter pruning: coupled layers share one channel mask chosen by summed L1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.models.zoo import BasicBlock, build
from slimkit.speedup import ModelSpeedup
from slimkit.speedup.dependency import channel_groups


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.block1 = BasicBlock(4, 4)
        self.block2 = BasicBlock(4, 6, stride=2)

    def forward(self, x):
        return self.block2(self.block1(self.stem(x)))


def _set_filters(conv: nn.Conv2d, norms: list[float]) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        per_filter = conv.weight[0].numel()
        for i, norm in enumerate(norms):
            conv.weight[i].fill_(norm / per_filter)


def test_channel_groups_of_residual_blocks():
    model = TwoBlocks().eval()
    groups = channel_groups(model, torch.randn(1, 2, 8, 8))
    assert [(g.members, g.partitions) for g in groups] == [
        (["stem", "block1.conv2"], 1), (["block2.conv2", "block2.down.0"], 1)]


def test_coupled_layers_prune_by_summed_l1():
    model = TwoBlocks().eval()
    _set_filters(model.stem, [1.0, 5.0, 2.0, 9.0])
    _set_filters(model.block1.conv2, [8.0, 0.5, 2.5, 1.0])  # sums: 9, 5.5, 4.5, 10 -> keep 0 and 3
    _set_filters(model.block2.conv2, [1, 2, 3, 4, 5, 6])
    _set_filters(model.block2.down[0], [6, 5, 0.5, 0.5, 0.5, 0.5])  # sums: 7, 7, 3.5, 4.5, 5.5, 6.5 -> 0, 1, 5
    x = torch.randn(1, 2, 8, 8)
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()

    def kept(name):
        return torch.nonzero(masks[name]["weight"].flatten(1).sum(1)).flatten().tolist()

    assert kept("stem") == kept("block1.conv2") == [0, 3]
    assert kept("block2.conv2") == kept("block2.down.0") == [0, 1, 5]


def test_group_conv_partitions_are_balanced():
    model, x = build("resnext_group")
    groups = {tuple(g.members): g.partitions for g in channel_groups(model, x)}
    assert groups[("body.0.conv2",)] == 4 and groups[("body.0.conv1",)] == 4
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dependency_aware=True, dummy_input=x)
    pruner.compress()
    keep = pruner.get_masks()["body.0.conv2"]["weight"].flatten(1).sum(1) > 0
    assert keep.view(4, -1).sum(1).tolist() == [2, 2, 2, 2]


def test_dependency_aware_masks_are_removed_exactly():
    model, x = build("resnet_basic")
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    convs = {c.name: c for c in report.layers}
    # Coupled through the residual adds, coupled convs keep the same channels. (A pruned channel whose
    # BatchNorm shift survives the ReLU is a constant a padded conv cannot absorb, so it may be kept.)
    assert convs["body.0.conv2"].out_after == convs["stem.0"].out_after < 8
    assert convs["body.1.down.0"].out_after == convs["body.2.conv2"].out_after < 16
    assert model.body[0].conv1.weight.shape[1] == convs["stem.0"].out_after


def test_speedup_reuses_the_pruner_capture():
    from slimkit.speedup import capture as capture_module

    model, x = build("resnet_basic")
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dependency_aware=True, dummy_input=x)
    kept = capture_module._LAST[0][2]
    assert capture_module.capture(model, (x,)) is kept
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    assert report.timings["capture"] < 0.05
    assert not capture_module._LAST  # the model changed: the capture is dropped


def test_group_coupled_to_an_excluded_layer_is_not_pruned():
    model = TwoBlocks().eval()
    _set_filters(model.block2.conv2, [1, 2, 3, 4, 5, 6])
    _set_filters(model.block2.down[0], [6, 5, 0.5, 0.5, 0.5, 0.5])
    _set_filters(model.block1.conv1, [4, 3, 2, 1])
    x = torch.randn(1, 2, 8, 8)
    config = [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"exclude": True, "op_names": ["stem"]}]
    with pytest.warns(UserWarning, match=r"\['block1.conv2'\] are not pruned: .* coupled with \['stem'\].*"
                                         r"group \['stem', 'block1.conv2'\]"):
        pruner = L1FilterPruner(model, config, dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    assert torch.equal(masks["block1.conv2"]["weight"], torch.ones(4, 4, 3, 3))
    assert masks["block1.conv1"]["weight"].flatten(1).sum(1).tolist() == [36.0, 36.0, 0.0, 0.0]
    assert masks["block2.conv2"]["weight"].flatten(1).sum(1).tolist() == [54.0, 54.0, 0, 0, 0, 54.0]  # 6 in x 3x3
    masked = pruner.model(x)
    pruner.unwrap_model()
    ModelSpeedup(model, x, masks).speedup_model()
    assert model.block1.conv2.out_channels == 4 and model.block1.conv1.out_channels == 2
    assert torch.allclose(model(x), masked, atol=1e-5)
