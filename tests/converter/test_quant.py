"""Dynamic-range (hybrid) int8: int8 per-channel weights read from one quantization table."""

from __future__ import annotations

import numpy as np
import pytest
import tflite
import torch
from torch import nn

from slimkit.converter.quant import quantize_per_channel
from tests.converter.conftest import read_model
from tests.converter.models import LSTMNet


def _int8_weights(path):
    model, sg = read_model(path)
    found = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        if t.Type() == tflite.TensorType.INT8:
            q = t.Quantization()
            found.append((t.ShapeAsNumpy().tolist(), q.ScaleLength(), q.QuantizedDimension()))
    return found


@pytest.mark.parametrize("hybrid_conv", [True, False])
def test_hybrid_conv_linear(check, hybrid_conv):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    path, _ = check(model, torch.randn(1, 3, 8, 8), rtol=3e-2, hybrid=True, hybrid_conv=hybrid_conv)
    weights = _int8_weights(path)
    expected = [([8, 3, 3, 3], 8, 0), ([1, 3, 3, 8], 8, 3), ([10, 288], 10, 0)] if hybrid_conv else \
        [([10, 288], 10, 0)]
    assert sorted(weights) == sorted(expected)


def test_hybrid_lstm(check):
    torch.manual_seed(0)
    path, _ = check(LSTMNet(), torch.randn(2, 6, 10), rtol=5e-2, hybrid=True)
    assert len(_int8_weights(path)) >= 3


def test_hybrid_file_is_smaller(tmp_path):
    from slimkit.converter import TFLiteConverter

    model, x = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)), torch.randn(1, 64)
    TFLiteConverter(model, x, tmp_path / "f.tflite").convert()
    TFLiteConverter(model, x, tmp_path / "h.tflite", hybrid=True).convert()
    assert (tmp_path / "h.tflite").stat().st_size < 0.4 * (tmp_path / "f.tflite").stat().st_size


def test_per_channel_symmetric_profile():
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    q, params = quantize_per_channel(w, 0)
    assert q.dtype == np.int8 and q.min() >= -127
    np.testing.assert_allclose(params.scale, np.abs(w).reshape(4, -1).max(1) / 127, rtol=1e-6)
    assert (np.abs(q).reshape(4, -1).max(1) == 127).all()
    assert (params.zero_point == 0).all()
