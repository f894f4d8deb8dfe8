"""quant_debug: per-tensor SQNR of the fake-quant model and of the int8 file against the float model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from slimkit import ConfigError, UnsupportedModelError, models
from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.analysis.quant_debug import quant_debug, sqnr
from slimkit.converter import TFLiteConverter

WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


def quantized(model: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, PostTrainingQuantizer, list]:
    torch.manual_seed(1)
    batches = [torch.randn(4, *shape) for _ in range(2)]
    quantizer = PostTrainingQuantizer(model.eval(), WHOLE_GRAPH, algorithm="minmax", dummy_input=batches[0][:1])
    quantizer.compress()
    quantizer.calibrate(batches)
    return model.eval(), quantizer, batches


def test_sqnr_values_are_the_formula():
    """Rows hold exactly 10 log10(signal / noise) of the float and fake-quant tensors, accumulated over samples."""
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    model, quantizer, batches = quantized(copy.deepcopy(float_model), (6,))
    table = quant_debug(model, quantizer, batches)
    assert [(row.layer, row.op) for row in table.rows] == [("(input)", "input"), ("0", "linear"), ("1", "tanh"),
                                                           ("2", "linear")]
    assert table.samples == 8 and all(row.file_sqnr is None for row in table.rows)
    x = torch.cat(batches)
    params = quantizer.params["0"]["input"]
    with torch.no_grad():
        fake_x = torch.fake_quantize_per_tensor_affine(x, float(params.scale[0]), int(params.zero_point[0]),
                                                       params.qmin, params.qmax)
        expected_out = sqnr(float_model(x).numpy().astype(np.float64), model(x).numpy().astype(np.float64))
    assert table.rows[0].fake_quant_sqnr == pytest.approx(sqnr(x.numpy(), fake_x.numpy()), rel=1e-9)
    assert table.rows[-1].fake_quant_sqnr == pytest.approx(expected_out, rel=1e-4)
    assert table.worst(1) == [min(table.rows, key=lambda row: row.fake_quant_sqnr)]


def test_file_tensors_match_fake_quant_and_model_is_untouched(tmp_path):
    """Every quantization point of the DigitsCNN is found in the int8 file (max-pool's through its int8 output), in
    PyTorch's layout: the file agrees with the fake-quant model (> 100 dB: same integers) and so with its SQNR."""
    model, quantizer, batches = quantized(models.DigitsCNN(), (1, 8, 8))
    path = str(tmp_path / "digits.tflite")
    TFLiteConverter(model, batches[0][:1], path).convert()
    before = copy.deepcopy(model.state_dict())
    table = quant_debug(model, quantizer, batches, path)
    assert [(row.layer, row.op) for row in table.rows] == [
        ("(input)", "input"), ("relu", "relu"), ("relu", "relu"), ("pool", "max_pool2d"), ("relu", "relu"),
        ("(graph)", "mean"), ("fc", "linear")]
    assert [row.shape for row in table.rows] == [(1, 1, 8, 8), (1, 32, 8, 8), (1, 64, 8, 8), (1, 64, 4, 4),
                                                 (1, 64, 4, 4), (1, 64), (1, 10)]
    for row in table.rows:
        assert row.file_vs_fake_quant_sqnr > 100, row
        assert row.file_sqnr == pytest.approx(row.fake_quant_sqnr, abs=1e-3)
        assert 20 < row.fake_quant_sqnr < math.inf
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    text = str(table)
    assert text.count("\n") == 2 + len(table.rows) and "| fc | linear | 1x10 |" in text
    table.plot(tmp_path / "sqnr.png")
    assert (tmp_path / "sqnr.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_names_what_to_do():
    model, quantizer, batches = quantized(nn.Sequential(nn.Linear(3, 2)), (3,))
    with pytest.raises(ConfigError, match="batches is empty"):
        quant_debug(model, quantizer, [])
    with pytest.raises(ConfigError, match="batch 0 is not a batched tensor"):
        quant_debug(model, quantizer, [[3.0]])
    with pytest.raises(UnsupportedModelError, match="Expected a PyTorch model"):
        quant_debug(object(), quantizer, batches)
    with pytest.raises(ConfigError, match="has not wrapped this model"):
        quant_debug(nn.Sequential(nn.Linear(3, 2)), quantizer, batches)
    weights_only = [{"quant_types": ["weight"], "op_types": ["Linear"]}]
    plain = nn.Sequential(nn.Linear(3, 2))
    other = PostTrainingQuantizer(plain, weights_only, dummy_input=batches[0][:1])
    other.compress()
    other.calibrate(batches)
    with pytest.raises(ConfigError, match="no activation quantization"):
        quant_debug(plain, other, batches)
