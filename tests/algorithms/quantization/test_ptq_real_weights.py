"""PTQ techniques on real pretrained weights: digit-recognizer-py's MNIST CNN on scikit-learn digits."""

from __future__ import annotations

import copy

import pytest
import torch

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.algorithms.quantization.techniques import AdaRound
from slimkit.models.mnist_cnn import load_pretrained_mnist_cnn, mnist_digits

WHOLE_GRAPH = [{"quant_types": ["weight", "output"], "quant_bits": {"weight": 4, "output": 8},
                "op_types": ["default"]}]


@pytest.fixture(scope="module")
def data() -> tuple[list[torch.Tensor], torch.Tensor]:
    calibration, _ = mnist_digits(128)
    evaluation, _ = mnist_digits(256, offset=128)
    return list(calibration.split(32)), evaluation


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sqnr(reference: torch.Tensor, output: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).mean() / (reference - output).pow(2).mean()))


def _quantized_output(techniques: list, data: tuple, profile: str = "tflite_per_tensor") -> tuple:
    calibration, evaluation = data
    model = load_pretrained_mnist_cnn()
    with torch.no_grad():
        reference = model(evaluation)
    ptq = PostTrainingQuantizer(copy.deepcopy(model), WHOLE_GRAPH, dummy_input=calibration[0][:1], profile=profile,
                                techniques=techniques, progress=False)
    quantized = ptq.compress()
    ptq.calibrate(calibration)
    with torch.no_grad():
        return reference, quantized(evaluation), ptq


def test_equalize_keeps_the_real_model_and_finds_its_pairs(data: tuple) -> None:
    calibration, evaluation = data
    model = load_pretrained_mnist_cnn()
    with torch.no_grad():
        before = model(evaluation)
    ptq = PostTrainingQuantizer(model, WHOLE_GRAPH, dummy_input=calibration[0][:1], techniques=["equalize"],
                                progress=False)
    ptq.calibrate(calibration)
    report = ptq.technique_reports[0]
    # conv -> ReLU -> max-pool -> conv twice; conv_layers.6 reaches fc_layers.0 through a flatten (not a pair)
    assert report.details["pairs"] == [("conv_layers.0", "conv_layers.3"), ("conv_layers.3", "conv_layers.6"),
                                       ("fc_layers.0", "fc_layers.2")]
    ptq.unwrap_model()
    with torch.no_grad():
        after = model(evaluation)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-5 * before.abs().max().item())


def test_equalize_and_bias_correction_beat_naive_per_tensor_w4(data: tuple) -> None:
    reference, naive, _ = _quantized_output([], data)
    _, corrected, ptq = _quantized_output(["equalize", "bias_correction"], data)
    assert [report.technique for report in ptq.technique_reports] == ["equalize", "bias_correction"]
    assert _sqnr(reference, corrected) > _sqnr(reference, naive) + 1.0


@pytest.mark.slow  # about 25 s on one core: 150 optimiser steps on each of the five layers
def test_adaround_beats_nearest_on_every_real_layer(data: tuple) -> None:
    _, _, ptq = _quantized_output([AdaRound(iterations=150, batch_size=16, lr=3e-2)], data, profile="tflite")
    details = ptq.technique_reports[0].details
    assert sorted(details["mse"]) == ["conv_layers.0", "conv_layers.3", "conv_layers.6", "fc_layers.0", "fc_layers.2"]
    assert all(details["mse"][name] < details["mse_nearest"][name] for name in details["mse"])
