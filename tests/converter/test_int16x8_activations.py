"""LiteRT's int16 LOGISTIC, TANH and SOFTMAX (profile ``'tflite_int16x8'``): ``emulate_integer()`` gives the file's
integers on every int16 input, on softmax rows of several lengths and scales, and through a gated model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import OpResolverType
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter, verify
from slimkit.utils.litert import interpreter
from tests.converter.test_int16x8 import PROFILE, WHOLE_GRAPH, assert_16x8_file


class Activations(nn.Module):
    """The three activations on the graph input (whose grid the test fills), a linear layer for the config to match."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        return torch.sigmoid(x), torch.tanh(x), torch.softmax(x, -1), self.fc(x)


def quantized(model: nn.Module, calibration: torch.Tensor, path) -> PostTrainingQuantizer:
    quantizer = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=calibration[:1],
                                      profile=PROFILE)
    quantizer.compress()
    quantizer.calibrate([calibration])
    TFLiteConverter(model, calibration[:1], path).convert()
    return quantizer


def builtin_outputs(path, feed: torch.Tensor) -> list[np.ndarray]:
    runner = interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner.resize_tensor_input(runner.get_input_details()[0]["index"], list(feed.shape))
    runner.allocate_tensors()
    runner.set_tensor(runner.get_input_details()[0]["index"], feed.numpy())
    runner.invoke()
    return [runner.get_tensor(d["index"]) for d in runner.get_output_details()]


def assert_outputs_equal(model, quantizer, path, feed) -> None:
    with torch.no_grad(), quantizer.emulate_integer():
        expected = model(feed)
    got = builtin_outputs(path, feed)
    for e in expected[:3]:  # the file orders its outputs its own way
        assert any(g.shape == tuple(e.shape) and np.array_equal(g, e.numpy()) for g in got)


@pytest.mark.parametrize("radius", [0.9, 4.0, 20.0, 2.0 ** -12 * 65535 / 2, 2.0 ** -11 * 65535 / 2])
def test_logistic_tanh_softmax_equal_litert_on_every_int16_input(tmp_path, radius):
    """All 65,536 integers of the input grid (its scale set by ``radius``), as rows of 256 for the softmax. The input
    scales ``2**-12`` (logistic and tanh) and ``2**-11`` (tanh) make LiteRT run gemmlowp's fixed-point functions
    instead of its tables."""
    model = Activations(256).eval()
    path = tmp_path / "activations16.tflite"
    quantizer = quantized(model, torch.linspace(-radius, radius, 65536).reshape(256, 256), path)
    scale = quantizer.graph_params["input/0"].scale[0]
    feed = torch.from_numpy((np.arange(-32768, 32768) * scale).astype(np.float32).reshape(256, 256))
    with torch.no_grad(), quantizer.emulate_integer():
        expected = [e.numpy() for e in model(feed)[:3]]
    got = builtin_outputs(path, feed)
    assert len({e.tobytes() for e in expected}) == 3
    for e in expected:  # each activation equals exactly one of the file's outputs
        assert sum(np.array_equal(g, e) for g in got) == 1
    assert np.unique(np.round(expected[0] * 32768)).size > 1000  # the logistic's whole range is exercised


@pytest.mark.parametrize("length", [3, 10, 77, 1000])
def test_softmax_equals_litert_on_random_rows(tmp_path, length):
    """Random int16 rows of several lengths, scales and spreads (rows dominated by one entry, flat rows)."""
    torch.manual_seed(length)
    model = Activations(length).eval()
    path = tmp_path / "softmax16.tflite"
    quantizer = quantized(model, torch.randn(64, length) * 6, path)
    feeds = [torch.randn(48, length) * spread for spread in (0.05, 1.0, 3.0, 8.0)]
    for feed in feeds:
        assert_outputs_equal(model, quantizer, path, feed)


class Gated(nn.Module):
    """A GRU-like gate: ``sigmoid(fc_g(x)) * tanh(fc_h(x))``, then a softmax head."""

    def __init__(self):
        super().__init__()
        self.gate, self.hidden, self.head = nn.Linear(12, 24), nn.Linear(12, 24), nn.Linear(24, 7)

    def forward(self, x):
        return torch.softmax(self.head(torch.sigmoid(self.gate(x)) * torch.tanh(self.hidden(x))), -1)


def test_gated_model_file_equals_emulation_and_verify_names_nothing_approximate(tmp_path):
    torch.manual_seed(0)
    model = Gated().eval()
    path = tmp_path / "gated16.tflite"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "does not compute these int8 ops" warning any more
        quantizer = quantized(model, torch.randn(64, 12) * 2, path)
    assert {"LOGISTIC", "TANH", "MUL", "SOFTMAX"} <= set(assert_16x8_file(path))
    torch.manual_seed(1)
    for feed in [torch.randn(16, 12) * s for s in (0.5, 1.0, 2.0, 4.0)]:
        with torch.no_grad(), quantizer.emulate_integer():
            expected = model(feed)
        np.testing.assert_array_equal(builtin_outputs(path, feed)[0], expected.numpy())
    result = verify(model, torch.randn(1, 12), path)
    assert result.approximate_ops == () and result.max_steps == 0.0
    assert {"LOGISTIC", "TANH", "SOFTMAX"} <= set(result.emulated_ops)


def test_emulated_ops_are_complete_whatever_module_is_imported_first():
    """Importing the activation kernels' module first used to leave them out of ``EMULATED_INT16_OPS``."""
    import subprocess
    import sys

    code = ("import slimkit.frameworks.torch.int16_activations\n"
            "from slimkit.frameworks.torch.int16_emulation import EMULATED_INT16_OPS\n"
            "print(sorted({'LOGISTIC', 'TANH', 'SOFTMAX', 'ADD'} & set(EMULATED_INT16_OPS)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2] == "['ADD', 'LOGISTIC', 'SOFTMAX', 'TANH']"
