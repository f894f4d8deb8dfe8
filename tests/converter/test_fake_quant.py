"""Fake-quantized graphs: QUANTIZE / DEQUANTIZE with the calibrated parameters, weights folded."""

from __future__ import annotations

import numpy as np
import tflite
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.converter import TFLiteConverter, verify
from tests.converter.conftest import op_codes, read_model


class FakeQuantNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x, 0.02, 3, -128, 127)
        scale = self.conv.weight.detach().abs().amax((1, 2, 3)) / 127
        w = torch.fake_quantize_per_channel_affine(self.conv.weight, scale, torch.zeros(4, dtype=torch.int32), 0,
                                                   -127, 127)
        y = F.relu(F.conv2d(x, w, self.conv.bias))
        return torch.fake_quantize_per_tensor_affine(y, torch.tensor(0.01), torch.tensor(-128, dtype=torch.int32),
                                                     -128, 127)


def test_fake_quant_model_within_one_step(tmp_path):
    torch.manual_seed(0)
    model, x = FakeQuantNet().eval(), torch.randn(1, 3, 8, 8)
    path = tmp_path / "q.tflite"
    conv = TFLiteConverter(model, x, path)
    conv.convert()
    assert op_codes(path) == ["QUANTIZE", "DEQUANTIZE", "CONV_2D", "QUANTIZE", "DEQUANTIZE"]
    assert verify(model, x, path).max_abs_error <= 0.01 + 1e-6
    _, sg = read_model(path)
    quantized = [sg.Tensors(i) for i in range(sg.TensorsLength()) if sg.Tensors(i).Type() == tflite.TensorType.INT8]
    params = sorted((float(t.Quantization().ScaleAsNumpy()[0]), int(t.Quantization().ZeroPointAsNumpy()[0]))
                    for t in quantized)
    np.testing.assert_allclose(params, [(0.01, -128), (0.02, 3)], rtol=1e-6)
    assert set(conv.graph.quant_table) == {t.Name().decode() for t in quantized}
