"""'gptq' (Hessian-based rounding on the quantizer's grid): input windows unfolded exactly as the convolution
multiplies them, weights exactly on the layer's grid, a lower output error than nearest rounding, the float
reference kept for bias correction, skipped by name without batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.algorithms.quantization.techniques import GPTQRounding
from slimkit.algorithms.quantization.techniques.gptq_rounding import input_rows
from slimkit.errors import ConfigError


@pytest.mark.parametrize("module", [nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1),
                                    nn.Conv2d(4, 8, (3, 2), padding=(1, 0), dilation=(1, 2), groups=4),
                                    nn.Conv2d(6, 6, 5, padding=2, groups=6), nn.Conv1d(3, 4, 4, stride=2, groups=1),
                                    nn.Linear(5, 3)])
def test_input_rows_times_weight_rows_is_the_layer(module) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5) if isinstance(module, nn.Linear) else torch.randn(
        2, module.in_channels, *([9, 8] if isinstance(module, nn.Conv2d) else [11]))
    groups = getattr(module, "groups", 1)
    rows = input_rows(module, x)  # (groups, positions, columns)
    weight = module.weight.detach().reshape(groups, module.weight.shape[0] // groups, -1)
    out = (rows @ weight.transpose(1, 2))  # (groups, positions, out per group)
    expected = module(x).detach() - (0 if module.bias is None else module.bias.detach().view(
        -1, *[1] * (x.dim() - 2)))
    if isinstance(module, nn.Linear):
        assert torch.allclose(out[0], expected, atol=1e-5)
        return
    n, channels = x.shape[0], expected.shape[1]
    spatial = expected.shape[2:]
    out = out.reshape(groups, n, -1, channels // groups).permute(1, 0, 3, 2).reshape(n, channels, *spatial)
    assert torch.allclose(out, expected, atol=1e-5)


def _on_grid(ptq: PostTrainingQuantizer, name: str) -> None:
    """The weight the layer computes with is an integer multiple of its channel's scale in [qmin, qmax], and the
    fake quantization leaves the stored (folded) weight as it is: it already lies on the grid."""
    layer = next(layer for layer in ptq.layers if layer.name == name)
    params = ptq.params[name]["weight"]
    weight = ptq.backend.effective_weight(layer)
    scale = torch.tensor(params.scale, dtype=torch.float64).view(-1, *[1] * (weight.dim() - 1))
    codes = weight.double() / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert int(codes.round().min()) >= params.qmin and int(codes.round().max()) <= params.qmax
    assert torch.allclose(layer.wrapper.quantized_weight(), weight, rtol=0, atol=1e-6 * float(weight.abs().max()))


def test_weights_on_grid_lower_output_error_and_float_reference_kept() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].running_var.uniform_(0.5, 2.0)
    mix = torch.randn(3, 3)  # correlated input channels: rounding errors can cancel
    batches = [torch.einsum("nchw,cd->ndhw", torch.randn(8, 3, 8, 8), mix) for _ in range(2)]
    stored = {name: model.get_submodule(name).weight.detach().clone() for name in ("0", "3", "5")}
    config = [{"quant_types": ["weight", "output"], "quant_bits": {"weight": 4, "output": 8}, "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model, config, dummy_input=batches[0][:1], techniques=["gptq"], progress=False)
    ptq.calibrate(batches)
    report = ptq.technique_reports[0]
    assert report.applied == ["0", "3", "5"] and ptq.calibration()["0"]["folded_bn"] == "1"
    for name in report.applied:
        assert report.details["error"][name] <= report.details["error_nearest"][name]
        _on_grid(ptq, name)
        assert torch.equal(ptq.float_weights[name], stored[name])  # bias correction's reference
    assert report.details["error"]["0"] < 0.9 * report.details["error_nearest"]["0"]
    ptq.freeze()  # the pinned parameters survive a refresh of the weight parameters
    _on_grid(ptq, "5")


def test_identity_hessian_gives_nearest_rounding() -> None:
    """Uncorrelated, equal-energy inputs (a Linear fed the rows of an identity): no error is spread, every weight
    is round(w / s) * s."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 3))
    weight = model[0].weight.detach().clone()
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Linear"]}],
                                techniques=[GPTQRounding(dampening=1e-6)], progress=False)
    ptq.calibrate([torch.eye(6)])
    scale = torch.tensor(ptq.params["0"]["weight"].scale, dtype=torch.float32).view(-1, 1)
    assert torch.equal(model[0].module.weight.detach(), torch.clamp(torch.round(weight / scale), -7, 7) * scale)


def test_without_batches_skipped_by_name_and_bad_options() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    ptq = PostTrainingQuantizer(model.eval(), [{"quant_types": ["weight"], "op_types": ["Conv2d"]}],
                                dummy_input=torch.randn(1, 3, 5, 5), techniques=["gptq", "bias_correction"],
                                progress=False)
    ptq.calibrate(None)
    gptq, correction = ptq.technique_reports
    assert gptq.applied == [] and sorted(gptq.skipped) == ["0", "3"] and "calibrate() got none" in gptq.skipped["0"]
    assert correction.applied == ["3"]  # the other technique still ran (from BatchNorm statistics)
    with pytest.raises(ConfigError, match="samples=0"):
        GPTQRounding(samples=0)
