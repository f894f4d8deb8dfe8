"""``optimize`` levels: each level changes the file (op counts) and every level matches PyTorch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.converter import TFLiteConverter
from tests.converter.conftest import op_codes
from tests.converter.test_int8 import parity, quantize, settle_bn


class Head(nn.Module):
    """conv -> BN -> ReLU -> global mean (keepdim) -> flatten -> unsqueeze / flatten -> Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = self.features(x).mean((2, 3), keepdim=True)
        return self.fc(y.flatten(1).unsqueeze(1).flatten(1))


FLOAT_OPS = {
    0: ["PAD", "CONV_2D", "MUL", "ADD", "RELU", "MEAN", "RESHAPE", "RESHAPE", "RESHAPE", "FULLY_CONNECTED"],
    1: ["CONV_2D", "MEAN", "RESHAPE", "RESHAPE", "RESHAPE", "FULLY_CONNECTED"],
    2: ["CONV_2D", "MEAN", "FULLY_CONNECTED"],
}


@pytest.mark.parametrize("level", sorted(FLOAT_OPS))
def test_float_ops_per_level(level, check):
    torch.manual_seed(0)
    path, _ = check(settle_bn(Head(), (3, 6, 6)), torch.randn(1, 3, 6, 6), optimize=level)
    assert op_codes(path) == FLOAT_OPS[level]


def test_levels_differ():
    assert len({tuple(ops) for ops in FLOAT_OPS.values()}) == len(FLOAT_OPS)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_quantized_model_per_level(level, tmp_path):
    """Level 0 keeps the fake-quant graph (QUANTIZE -> DEQUANTIZE around float kernels); level 1 makes
    int8 kernels; level 2 also folds the RESHAPEs. Every level stays within one output step."""
    torch.manual_seed(0)
    model, x = quantize(settle_bn(Head(), (3, 6, 6)), (3, 6, 6))
    path = tmp_path / f"q{level}.tflite"
    conv = TFLiteConverter(model, x, path, optimize=level)
    conv.convert()
    codes = op_codes(path)
    conv_op = next(op for op in conv.graph.ops if op.code == "CONV_2D")
    assert conv_op.inputs[0].dtype == ("float32" if level == 0 else "int8")
    assert codes.count("RESHAPE") == {0: 3, 1: 3, 2: 0}[level], codes
    if level:
        assert codes.count("QUANTIZE") == codes.count("DEQUANTIZE") == 1, codes
    else:
        assert codes.count("DEQUANTIZE") > 3, codes
    assert parity(model, x, path) == 1.0
