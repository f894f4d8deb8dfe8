"""'bias_correction': the mean quantization error of each channel is zero on the calibration data (empirical), and
shrinks to the sampling noise of the BatchNorm's Gaussian without data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.algorithms.quantization.techniques import AdaRound, BiasCorrection
from slimkit.errors import ConfigError
from slimkit.utils.threads import single_thread


def _quantized(weight: torch.Tensor, scales: list[float]) -> torch.Tensor:
    scale = torch.tensor(scales, dtype=weight.dtype).view(-1, *[1] * (weight.dim() - 1))
    return torch.clamp(torch.round(weight / scale), -127, 127) * scale


def test_empirical_weights_reference_mean_error_zero_per_channel() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU(),
                          nn.Conv2d(4, 5, 3)).eval()
    batches = [torch.rand(6, 3, 7, 7) + 0.5 for _ in range(3)]
    config = [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Conv2d"]}]
    biases = {name: model.get_submodule(name).bias.detach().clone() for name in ("0", "2", "4")}
    ptq = PostTrainingQuantizer(model, config, techniques=[BiasCorrection(reference="weights")], progress=False)
    ptq.calibrate(batches)
    report = ptq.technique_reports[0]
    assert report.applied == ["0", "2", "4"] and report.details["mode"] == "empirical"
    assert min(report.details["max_shift"].values()) > 1e-3  # 4-bit weights: a real shift was removed
    calibration = ptq.calibration()
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in ("0", "2", "4")}
    for name in inputs:
        model.get_submodule(name).register_forward_pre_hook(lambda m, args, name=name: inputs[name].append(args[0]))
    with torch.no_grad():
        for batch in batches:
            model(batch)
        for name, xs in inputs.items():
            conv = ptq.layers[int(name) // 2].module
            x = torch.cat(xs)
            # quantized layer (corrected bias) minus float layer (original bias), on the same input
            error = nn.functional.conv2d(x, _quantized(conv.weight, calibration[name]["weight_scale"]) - conv.weight,
                                         conv.bias - biases[name], conv.stride, conv.padding)
            float_out = conv(x)
            per_channel = error.transpose(0, 1).reshape(error.shape[1], -1).mean(1)
            assert per_channel.abs().max() <= 1e-5 * float_out.abs().max(), name


def _pre_activation_means(model: nn.Module, batches: list[torch.Tensor], names: tuple[str, ...]) -> dict:
    """Each named layer's output, averaged per channel over the batches (float64)."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: outputs[name].append(out))
               for name in names]
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(xs).transpose(0, 1).reshape(xs[0].shape[1], -1).double().mean(1)
            for name, xs in outputs.items()}


@pytest.mark.parametrize("techniques", [["bias_correction"],
                                        [AdaRound(iterations=40, batch_size=8), "bias_correction"]])
def test_empirical_float_reference_mean_output_equals_float_model(techniques) -> None:
    """Default reference='float': every layer's mean output per channel in the quantized model (quantized inputs and
    outputs, earlier layers corrected) equals the float model's, after AdaRound too (its float weights are the
    reference, not the rounded ones it wrote)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU(),
                          nn.Conv2d(4, 5, 3)).eval()
    batches = [torch.rand(6, 3, 7, 7) + 0.5 for _ in range(3)]
    names = ("0", "2", "4")
    float_means = _pre_activation_means(model, batches, names)
    config = [{"quant_types": ["weight", "input"], "quant_bits": {"weight": 4, "input": 8}, "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model, config, techniques=techniques, progress=False)
    with single_thread():  # AdaRound's many tiny steps: a second thread only adds synchronisation
        ptq.calibrate(batches)
    report = ptq.technique_reports[-1]
    assert report.applied == list(names) and report.details["reference"] == "float"
    if len(techniques) == 2:
        assert set(ptq.float_weights) == set(ptq.technique_reports[0].applied) != set()
    quantized_means = _pre_activation_means(model, batches, names)
    calibration = ptq.calibration()
    for name in names:
        # up to half a step of the int32 bias grid (input scale x weight scale: large with 4-bit weights)
        step = torch.tensor(calibration[name]["weight_scale"], dtype=torch.float64) * calibration[name]["input_scale"]
        error = (quantized_means[name] - float_means[name]).abs()
        assert bool((error <= step / 2 + 1e-6 * float_means[name].abs().max()).all()), (name, error, step)
    assert min(report.details["max_shift"].values()) > 1e-4 * max(m.abs().max() for m in float_means.values())


def test_bad_reference_named() -> None:
    with pytest.raises(ConfigError, match="reference='mean'"):
        BiasCorrection(reference="mean")


def test_empirical_with_folded_batchnorm_corrects_beta() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, bias=False), nn.BatchNorm2d(6)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.2, 2.0)
        model[1].weight.uniform_(0.5, 2.0)
    x = torch.rand(16, 2, 6, 6) + 1.0
    float_out = model(x).detach()
    beta = model[1].bias.detach().clone()
    config = [{"quant_types": ["weight"], "quant_bits": 3, "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model, config, dummy_input=x[:1], techniques=["bias_correction"], progress=False)
    ptq.calibrate([x[:8], x[8:]])
    assert ptq.calibration()["0"]["folded_bn"] == "1"
    assert not torch.equal(model[1].bias, beta) and ptq.technique_reports[0].applied == ["0"]
    error = (model(x) - float_out).transpose(0, 1).reshape(6, -1).mean(1)
    assert error.abs().max() <= 1e-5 * float_out.abs().max()


def test_from_batchnorm_statistics_without_data() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1.0, 1.0)
    gamma, beta = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    float_second = model[4](model[3](torch.zeros(1, 8, 1, 1))).detach()  # for the bias before correction
    config = [{"quant_types": ["weight"], "quant_bits": 3, "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model, config, dummy_input=torch.randn(1, 3, 4, 4), techniques=["bias_correction"],
                                progress=False)
    ptq.calibrate(None)
    report = ptq.technique_reports[0]
    assert report.details["mode"] == "bn_statistics" and report.applied == ["3"]
    assert "first" not in report.skipped["0"] and "BatchNorm" in report.skipped["0"]
    # the second layer's input as the BatchNorm describes it: relu(N(beta, gamma^2)) per channel
    z = torch.relu(beta.view(1, 8, 1, 1) + gamma.view(1, 8, 1, 1) * torch.randn(200_000, 8, 1, 1))
    wrapper = ptq.layers[1].wrapper
    with torch.no_grad():
        quantized = wrapper.kernel(ptq, ptq.layers[1])
        q_out = nn.functional.conv2d(z, quantized.weight) + quantized.bias.view(1, -1, 1, 1)
        folded = model[4].weight / torch.sqrt(model[4].running_var + model[4].eps)
        f_out = nn.functional.conv2d(z, ptq.layers[1].module.weight * folded.view(-1, 1, 1, 1)) + (
            float_second.view(1, -1, 1, 1) - 0)
    before = report.details["max_shift"]["3"]
    after = (q_out - f_out).mean((0, 2, 3)).abs().max().item()
    assert before > 0.05 and after < 0.05 * before


def test_data_free_calibration_ranges_from_batchnorm() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2),
                          nn.ReLU()).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -1.0, 0.25, 2.0]))
        model[1].bias.copy_(torch.tensor([0.0, 1.0, -3.0, 0.5]))
    config = [{"quant_types": ["weight", "output"], "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model, config, dummy_input=torch.randn(1, 3, 5, 5), progress=False)
    ptq.calibrate([])
    params = ptq.params["0"]["output"]
    scale, zero_point = float(params.scale[0]), int(params.zero_point[0])
    lo, hi = (params.qmin - zero_point) * scale, (params.qmax - zero_point) * scale
    # min / max over the channels of beta -+ 6 |gamma|: channel 3 on both sides
    assert abs(lo - (0.5 - 6 * 2.0)) < scale and abs(hi - (0.5 + 6 * 2.0)) < scale
    assert ptq.calibration()["2"]["fused_activation"] == "relu" and int(ptq.params["2"]["output"].zero_point[0]) == -128
    assert ptq.calibrated and ptq.frozen


def test_data_free_refuses_layers_without_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 2)).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = [{"quant_types": ["weight", "output"], "op_types": ["Conv2d", "Linear"]}]
    ptq = PostTrainingQuantizer(model, config, dummy_input=torch.randn(1, 3, 5, 5), techniques=["equalize"],
                                progress=False)
    try:
        ptq.calibrate(None)
    except Exception as error:  # noqa: BLE001 (the type is checked below)
        from slimkit import ConfigError

        assert isinstance(error, ConfigError) and "['3']" in str(error) and "batches" in str(error)
    else:
        raise AssertionError("calibrate(None) ranged a Linear output without a BatchNorm")
    assert not ptq.wrapped and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
