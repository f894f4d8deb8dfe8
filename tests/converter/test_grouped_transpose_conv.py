"""A grouped ``nn.ConvTranspose2d`` (weight ``(in, out / groups, kH, kW)``) quantizes (per-channel weight scales on
axis 1, its output-channel axis) and is written as a named float island: LiteRT's TRANSPOSE_CONV takes no groups, so
the file holds one float TRANSPOSE_CONV per group, concatenated. Calibration used to fail on a shape broadcast in the
bias bound (6 biases against 3 weight scales)."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from slimkit.converter import TFLiteConverter, verify
from tests.converter.test_int8 import quantize_with, tensor_types

SHAPE = (4, 6, 6)
CODES = ["SPLIT", "DEQUANTIZE", "DEQUANTIZE", "TRANSPOSE_CONV", "TRANSPOSE_CONV", "CONCATENATION", "RELU", "QUANTIZE"]


def decoder() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2), nn.ReLU(),
                         nn.Conv2d(6, 4, 1)).eval()


@pytest.mark.parametrize("op_types, codes", [
    ("default", ["QUANTIZE", "CONV_2D", *CODES, "CONV_2D", "DEQUANTIZE"]),
    ("ConvTranspose2d", ["CONV_2D", "QUANTIZE", *CODES, "DEQUANTIZE", "CONV_2D"]),
])
def test_grouped_transposed_conv_quantizes_and_is_a_named_float_island(tmp_path, op_types, codes):
    model, x, ptq = quantize_with(decoder(), SHAPE, [{"quant_types": ["input", "weight", "output"],
                                                      "op_types": [op_types]}])
    up = model[1].module
    grid = ptq.params["1"]["weight"]
    assert grid.axis == 1 and grid.scale.shape == (3,)
    steps = up.weight.detach().double().abs().amax((0, 2, 3)).numpy() / 127  # per output channel of a group
    np.testing.assert_allclose(grid.scale, steps, rtol=1e-6)
    path = tmp_path / "grouped_up.tflite"
    with pytest.warns(UserWarning, match=r"1\.module \(ConvTranspose2d, float: conv_transpose2d\)"):
        TFLiteConverter(model, x, path).convert()
    assert [code for code, _, _ in tensor_types(path)] == codes
    result = verify(model, x, path)
    assert "1.module (ConvTranspose2d, float: conv_transpose2d)" in result.float_layers
    assert result.max_abs_error < 1e-6
