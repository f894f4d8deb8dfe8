"""'adaround': every weight exactly floor or ceil of w / scale times scale, a lower layer-output MSE than
round-to-nearest, skipped by name without batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.algorithms.quantization.techniques import AdaRound


@pytest.fixture(autouse=True)
def _one_thread():
    """Hundreds of tiny optimiser steps: a second thread only adds synchronisation (25x slower on a loaded CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check_grid(ptq: PostTrainingQuantizer, name: str, float_weight: torch.Tensor) -> None:
    """The weight the layer computes with is floor(w / s) * s or ceil(w / s) * s, element by element, exactly."""
    layer = next(layer for layer in ptq.layers if layer.name == name)
    params = ptq.params[name]["weight"]
    scale = torch.tensor(params.scale, dtype=torch.float32).view(-1, *[1] * (float_weight.dim() - 1))
    quantized = layer.wrapper.quantized_weight()
    down, up = torch.floor(float_weight / scale) * scale, torch.ceil(float_weight / scale) * scale
    assert bool(((quantized == down) | (quantized == up)).all())
    nearest = torch.round(float_weight / scale) * scale
    assert not torch.equal(quantized, nearest)  # some weights were rounded the other way


def test_weights_on_floor_or_ceil_and_better_than_nearest() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    batches = [torch.randn(8, 3, 6, 6) for _ in range(2)]
    float_weights = {name: model.get_submodule(name).weight.detach().clone() for name in ("0", "2")}
    config = [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model, config, techniques=[AdaRound(iterations=300, batch_size=8, lr=3e-2)],
                                progress=False)
    ptq.calibrate(batches)
    report = ptq.technique_reports[0]
    assert report.applied == ["0", "2"] and set(report.details["seconds"]) == {"0", "2"}
    for name in ("0", "2"):
        assert report.details["mse"][name] < report.details["mse_nearest"][name]
        _check_grid(ptq, name, float_weights[name])
    ptq.freeze()  # the pinned scale survives a refresh of the weight parameters
    _check_grid(ptq, "2", float_weights["2"])


def test_folded_batchnorm_layer_on_its_folded_grid() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(16, 2, 5, 5)
    bn = model[1]
    folded = (model[0].weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)).detach()
    config = [{"quant_types": ["weight", "output"], "quant_bits": {"weight": 3, "output": 8}, "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model, config, dummy_input=x[:1], techniques=[AdaRound(iterations=200)],
                                progress=False)
    ptq.calibrate([x])
    assert ptq.calibration()["0"]["folded_bn"] == "1"
    _check_grid(ptq, "0", folded)


def test_without_batches_every_layer_skipped_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    config = [{"quant_types": ["weight"], "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model.eval(), config, dummy_input=torch.randn(1, 3, 5, 5),
                                techniques=["equalize", "adaround"], progress=False)
    ptq.calibrate(None)
    equalize, adaround = ptq.technique_reports
    assert equalize.applied == ["0", "3"]  # the other technique still ran
    assert adaround.applied == [] and sorted(adaround.skipped) == ["0", "3"]
    assert "calibration batches" in adaround.skipped["0"]


def test_a_kernel_wider_than_the_crop_sees_a_window_as_wide_as_the_kernel() -> None:
    """silero-vad's STFT conv has 256 taps: a 32-sample window could not run it (PyTorch refused the step)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv1d(1, 6, 40, stride=8)).eval()
    float_weight = model[0].weight.detach().clone()
    config = [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Conv1d"]}]
    ptq = PostTrainingQuantizer(model, config, techniques=[AdaRound(iterations=100, batch_size=8, crop=32)],
                                progress=False)
    ptq.calibrate([torch.randn(8, 1, 100)])
    report = ptq.technique_reports[0]
    assert report.applied == ["0"] and report.details["mse"]["0"] <= report.details["mse_nearest"]["0"]
    scale = torch.tensor(ptq.params["0"]["weight"].scale, dtype=torch.float32).view(-1, 1, 1)
    quantized = next(layer for layer in ptq.layers if layer.name == "0").wrapper.quantized_weight()
    assert bool(((quantized == torch.floor(float_weight / scale) * scale)
                 | (quantized == torch.ceil(float_weight / scale) * scale)).all())
