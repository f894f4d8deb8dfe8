"""Exactness details: BatchNorm constants folded or kept, fine-grained masks, shared heads, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit import SlimkitError, UnsupportedOpError
from slimkit.models.zoo import build
from slimkit.speedup import ModelSpeedup
from tests.speedup.helpers_speedup import masked_copy, random_masks, relative_error


def _conv_bn_conv(padding: int) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 3, 3, padding=padding))
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.5, 1.0, -1.0, 2.0]))  # pruned channels become constants
        model[1].running_mean.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    return model.eval()


def _channel_masks(keep: list[float]) -> dict:
    keep = torch.tensor(keep)
    return {"0": {"weight": keep.view(-1, 1, 1, 1).expand(4, 2, 3, 3).clone(), "bias": None}}


@pytest.mark.parametrize("padding, kept", [(0, 2), (1, 3)])
def test_batchnorm_constant_is_folded_or_kept(padding, kept):
    # Channels 1 and 2 are pruned. After BN + ReLU channel 1 is the constant relu(1.0 - 0.2) > 0 and
    # channel 2 is relu(negative) = 0. An unpadded conv folds the constant into its bias; a padded conv
    # sees it only inside the image, so the channel must stay.
    model, x = _conv_bn_conv(padding), torch.randn(2, 2, 9, 9)
    masks = _channel_masks([1, 0, 0, 1])
    reference = masked_copy(model, masks)
    ModelSpeedup(model, x, masks).speedup_model()
    assert model[0].out_channels == kept and model[3].in_channels == kept
    assert model[3].bias is not None
    with torch.no_grad():
        assert relative_error(model(x), reference(x)) <= 1e-5


def test_fine_grained_masks_stay_zero_inside_kept_channels():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    weight = torch.tensor([[1.0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1]])
    masks = {"0": {"weight": weight, "bias": torch.tensor([1.0, 0, 1])}}
    x = torch.randn(5, 4)
    reference = masked_copy(model, masks)
    ModelSpeedup(model, x, masks).speedup_model()
    assert model[0].weight.shape == (2, 4) and model[0].weight[0, 1] == 0 and model[0].weight[1, 2] == 0
    with torch.no_grad():
        assert relative_error(model(x), reference(x)) <= 1e-6


def test_shared_head_keeps_one_channel_set_for_all_calls():
    model, x = build("shared_head")
    masks = random_masks(model, seed=4)
    reference = masked_copy(model, masks)
    ModelSpeedup(model, x, masks).speedup_model()
    assert model.head[0].in_channels == model.stage1[0].out_channels
    with torch.no_grad():
        assert relative_error(model(x), reference(x)) <= 1e-5


class Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.fft.fft2(self.conv(x)).real


def test_unknown_op_raises_and_leaves_model_unchanged():
    model = Unknown().eval()
    masks = random_masks(model, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedOpError, match=r"fft.*'<root>'.*exclude"):
        ModelSpeedup(model, torch.randn(1, 3, 8, 8), masks).speedup_model()
    assert model.conv.out_channels == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_masks_for_another_model_are_rejected():
    model, x = build("resnet_basic")
    with pytest.raises(SlimkitError, match="masks name layer .nope., which is not a layer with a weight in the model"):
        ModelSpeedup(model, x, {"nope": {"weight": torch.ones(1), "bias": None}}).speedup_model()
    with pytest.raises(SlimkitError, match="wrong shape"):
        ModelSpeedup(model, x, {"stem.0": {"weight": torch.ones(1), "bias": None}}).speedup_model()


def test_wrapped_model_is_rejected():
    from slimkit.algorithms.pruning import L1FilterPruner

    model, x = build("resnet_basic")
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    with pytest.raises(SlimkitError, match="unwrap_model"):
        ModelSpeedup(model, x, pruner.get_masks()).speedup_model()


def test_report_lists_layers():
    model, x = build("plain_cnn")
    speedup = ModelSpeedup(model, x, random_masks(model, seed=5))
    speedup.speedup_model()
    report = speedup.report
    names = [c.name for c in report.layers]
    assert "fc1" in names and report.params_ratio < 1 and report.flops_ratio < 1
    assert "params" in str(report)
