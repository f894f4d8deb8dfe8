"""'equalize': float output unchanged, ranges equalized as the formula says, pairs that cannot be equalized named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit import ConfigError, SlimkitError
from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.algorithms.quantization.techniques import Equalize

CONFIG = [{"quant_types": ["weight", "output"], "op_types": ["Conv2d", "Linear"]}]


def _spread(model: nn.Module) -> nn.Module:
    """Random weights with channel ranges spread over three decades, BatchNorms with real statistics."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(torch.logspace(-1.5, 1.5, module.weight.shape[0])[
                    torch.randperm(module.weight.shape[0])].view(-1, *[1] * (module.weight.dim() - 1)))
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.2, 3.0)
                module.bias.uniform_(-1, 1)
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _separable(middle: nn.Module | None = None) -> nn.Module:
    """expand 1x1 -> BN -> ReLU -> depthwise -> BN -> LeakyReLU (``middle``) -> project 1x1 (with bias) -> ReLU ->
    Linear."""
    return _spread(nn.Sequential(
        nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), middle or nn.LeakyReLU(0.1),
        nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 25, 4)))


def _folded(model: nn.Module, layer: int, bn: int | None) -> torch.Tensor:
    weight = model[layer].weight
    if bn is None:
        return weight
    norm = model[bn]
    return weight * (norm.weight / torch.sqrt(norm.running_var + norm.eps)).view(-1, 1, 1, 1)


def _ranges(model: nn.Module, first: int, bn: int | None, second: int,
            second_bn: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ranges of ``first`` and of ``second``'s matching input channels (each with its BN folded)."""
    weight = _folded(model, first, bn)
    second_weight = _folded(model, second, second_bn)
    grouped = second_weight.reshape(second_weight.shape[0], -1) if model[second].groups > 1 else \
        second_weight.transpose(0, 1).reshape(second_weight.shape[1], -1)
    return weight.abs().flatten(1).amax(1).detach(), grouped.abs().amax(1).detach()


def test_float_output_unchanged_and_chain_equalized() -> None:
    model = _separable()
    x = torch.randn(32, 3, 5, 5)
    before = model(x).detach()
    ptq = PostTrainingQuantizer(model, CONFIG, dummy_input=x[:1], techniques=["equalize"], progress=False)
    ptq.calibrate([x])
    report = ptq.technique_reports[0]
    assert report.details["pairs"] == [("0", "3"), ("3", "6")]
    assert report.applied == ["0", "3", "6"] and report.skipped == {}
    assert 1 < report.details["iterations"] < 20
    ptq.unwrap_model()
    after = model(x).detach()
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-5 * before.abs().max().item())
    for first, bn, second, second_bn in ((0, 1, 3, 4), (3, 4, 6, None)):  # converged: both sides of a pair agree
        r1, r2 = _ranges(model, first, bn, second, second_bn)
        assert torch.allclose(r1, r2, rtol=1e-3)


def test_one_pair_equals_the_formula() -> None:
    """One pair: r1 / s == r2 * s == sqrt(r1 r2) per channel, after a single pass (conv bias scaled too)."""
    model = _spread(nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Conv2d(5, 3, 1)))
    x = torch.randn(8, 2, 6, 6)
    before = model(x).detach()
    r1, r2 = _ranges(model, 0, None, 2)
    ptq = PostTrainingQuantizer(model, CONFIG, dummy_input=x[:1], techniques=[Equalize(iterations=1)], progress=False)
    ptq.calibrate([x])
    ptq.unwrap_model()
    new1, new2 = _ranges(model, 0, None, 2)
    expected = torch.sqrt(r1 * r2)
    assert torch.allclose(new1, expected, rtol=1e-6) and torch.allclose(new2, expected, rtol=1e-6)
    assert torch.allclose(model(x), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", [nn.GELU(), nn.Sigmoid(), nn.Hardswish(), nn.ReLU6()])
def test_non_homogeneous_activation_skipped_by_name(activation: nn.Module) -> None:
    model = _spread(nn.Sequential(nn.Conv2d(2, 4, 1), activation, nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)))
    x = torch.randn(4, 2, 3, 3)
    before = model(x).detach()
    ptq = PostTrainingQuantizer(model, CONFIG, dummy_input=x[:1], techniques=["equalize"], progress=False)
    ptq.calibrate([x])
    report = ptq.technique_reports[0]
    assert list(report.skipped) == ["0"] and "'1'" in report.skipped["0"] and "'2'" in report.skipped["0"]
    assert report.details["pairs"] == [("2", "4")]  # the other pair still ran
    ptq.unwrap_model()
    assert torch.allclose(model(x), before, rtol=1e-5, atol=1e-6)


def test_relu6_replaced_by_relu_on_request() -> None:
    model = _spread(nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU6(), nn.Conv2d(4, 2, 1)))
    x = torch.randn(4, 2, 3, 3) * 0.1  # below the clip: the ReLU the ReLU6 becomes computes the same
    before = model(x).detach()
    ptq = PostTrainingQuantizer(model, CONFIG, dummy_input=x[:1], techniques=[Equalize(relu6="relu")], progress=False)
    ptq.calibrate([x])
    report = ptq.technique_reports[0]
    assert report.details["relu6_replaced"] == ["1"] and report.details["pairs"] == [("0", "2")]
    assert type(model[1]) is nn.ReLU and ptq.calibration()["0"]["fused_activation"] == "relu"
    ptq.unwrap_model()
    assert torch.allclose(model(x), before, rtol=1e-5, atol=1e-6)


def test_rollback_when_calibration_fails() -> None:
    model = _spread(nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU6(), nn.Conv2d(4, 2, 1)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ptq = PostTrainingQuantizer(model, CONFIG, dummy_input=torch.randn(1, 2, 3, 3),
                                techniques=[Equalize(relu6="relu")], progress=False)
    with pytest.raises(SlimkitError, match="batch 0"):
        ptq.calibrate([torch.randn(1, 5, 3, 3)])  # equalize runs, then the batch fails
    assert type(model[1]) is nn.ReLU6 and not ptq.wrapped and ptq.technique_reports == []
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert ptq.graph_plan.fusions["0"].activation == "relu6"


def test_bad_options() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="dummy_input"):
        PostTrainingQuantizer(model, CONFIG, techniques=["equalize"])
    with pytest.raises(ConfigError, match="relu6"):
        Equalize(relu6="clip")
    with pytest.raises(ConfigError, match="sharpen"):
        PostTrainingQuantizer(model, CONFIG, techniques=["sharpen"])


def test_techniques_then_tflite_file_equals_the_emulation(tmp_path) -> None:
    """Per-tensor weights, equalized and bias-corrected: the int8 file computes what emulate_integer() computes."""
    from slimkit.converter import TFLiteConverter, verify

    model = _separable(nn.ReLU())  # LeakyReLU's int8 kernel is emulated approximately (verify() says so)
    x = torch.randn(8, 3, 5, 5)
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["default"]}],
                                dummy_input=x[:1], profile="tflite_per_tensor", progress=False,
                                techniques=["equalize", "bias_correction"])
    ptq.compress()
    ptq.calibrate([x])
    assert isinstance(ptq.calibration()["3"]["weight_scale"], float)  # one scale per tensor
    path = tmp_path / "model.tflite"
    TFLiteConverter(model, x[:1], str(path)).convert()
    result = verify(model, x[:1], str(path))
    assert result.emulated_integer and result.max_abs_error == 0.0


def test_relu6_equalized_below_the_clip_from_batchnorm_statistics() -> None:
    """relu6='bound': channels below 6 on the calibration data are scaled (and stay below 6), one that reaches 6 is
    not; the output is unchanged on that data."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU6(), nn.Conv2d(6, 4, 1))
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-1, 1, 6).view(-1, 1, 1, 1))
    x = torch.randn(64, 3, 4, 4)
    model.train()
    model[1].momentum = None  # cumulative: running statistics of exactly this data
    model(x)
    model.eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.2, 0.3, 0.1, 0.5, 0.05, 1.0]))
        model[1].bias.copy_(torch.tensor([0.5, -3.0, 1.0, 0.2, 0.1, 5.0]))  # channel 5 reaches the clip
    before = model(x).detach()
    r1, _ = _ranges(model, 0, 1, 3)
    ptq = PostTrainingQuantizer(model, CONFIG, dummy_input=x[:1], techniques=[Equalize(relu6="bound", iterations=1)],
                                progress=False)
    ptq.calibrate([x])
    assert ptq.technique_reports[0].details["pairs"] == [("0", "3")] and type(model[2]) is nn.ReLU6
    ptq.unwrap_model()
    new1, new2 = _ranges(model, 0, 1, 3)
    assert torch.equal(new1[5], r1[5]) and not torch.allclose(new1[:5], r1[:5])
    top = model[1](model[0](x)).transpose(0, 1).reshape(6, -1).amax(1)
    assert bool((top[:5] <= 6 + 1e-5).all()) and top[5] > 6
    assert torch.allclose(model(x), before, rtol=1e-5, atol=1e-6)


def test_relu6_bound_from_batchnorm_without_batches() -> None:
    """Data-free: the bound is beta + 6 |gamma| of the BatchNorm before the ReLU6."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU6(), nn.Conv2d(4, 2, 1),
                          nn.BatchNorm2d(2)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([0.1, 1.0, 10.0, 1.0]).view(-1, 1, 1, 1))
        model[1].weight.copy_(torch.tensor([0.1, 0.2, 0.1, 1.0]))
        model[1].bias.copy_(torch.tensor([0.2, -2.0, 0.3, 1.0]))  # channel 3: 1 + 6 > 6, reaches the clip
    config = [{"quant_types": ["weight", "output"], "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model, config, dummy_input=torch.randn(1, 3, 2, 2),
                                techniques=[Equalize(relu6="bound", iterations=1)], progress=False)
    ptq.calibrate(None)
    assert ptq.technique_reports[0].details["pairs"] == [("0", "3")]
    top = model[1].bias + 6 * model[1].weight.abs()
    assert bool((top[:3] <= 6 + 1e-5).all()) and torch.allclose(top[3], torch.tensor(7.0))
