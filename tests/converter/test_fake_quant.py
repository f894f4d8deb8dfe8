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
    # the conv runs as an int8 kernel between the model's QUANTIZE and DEQUANTIZE
    assert op_codes(path) == ["QUANTIZE", "CONV_2D", "DEQUANTIZE"]
    assert verify(model, x, path).max_abs_error <= 0.01 + 1e-6  # within one output step
    _, sg = read_model(path)
    types = {tflite.TensorType.INT8, tflite.TensorType.INT32}
    quantized = {sg.Tensors(i).Name().decode(): sg.Tensors(i) for i in range(sg.TensorsLength())
                 if sg.Tensors(i).Type() in types and sg.Tensors(i).Quantization() is not None
                 and sg.Tensors(i).Quantization().ScaleLength()}
    assert set(conv.graph.quant_table) == set(quantized)
    activations = sorted((float(t.Quantization().ScaleAsNumpy()[0]), int(t.Quantization().ZeroPointAsNumpy()[0]))
                         for t in quantized.values() if t.Quantization().ScaleLength() == 1)
    np.testing.assert_allclose(activations, [(0.01, -128), (0.02, 3)], rtol=1e-6)
    weight = next(t for t in quantized.values() if t.Type() == tflite.TensorType.INT8 and t.Quantization().ScaleLength()
                  == 4)
    np.testing.assert_allclose(weight.Quantization().ScaleAsNumpy(),
                               model.conv.weight.detach().abs().amax((1, 2, 3)).numpy() / 127, rtol=1e-6)


def test_float_island_keeps_dequantize(tmp_path):
    class M(nn.Module):
        def forward(self, x):
            x = torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127)
            return torch.sigmoid(x) * 2

    model, x = M(), torch.randn(1, 3, 4, 4)
    path = tmp_path / "q.tflite"
    TFLiteConverter(model, x, path).convert()
    assert op_codes(path)[:2] == ["QUANTIZE", "DEQUANTIZE"]
    assert verify(model, x, path).max_abs_error < 1e-5


class FQ(nn.Module):
    """Per-tensor int8 activation fake-quant with a fixed range."""

    def __init__(self, lo, hi):
        super().__init__()
        self.scale, self.zero = (hi - lo) / 255, int(round(-128 - lo / ((hi - lo) / 255)))

    def forward(self, x):
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero, -128, 127)


class QConv(nn.Module):
    """A conv / linear whose weight is fake-quantized per output channel (what slimkit's wrappers do)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        w = self.layer.weight
        scale = w.detach().abs().reshape(w.shape[0], -1).amax(1) / 127
        wq = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(w.shape[0], dtype=torch.int32), 0, -127, 127)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, wq, self.layer.bias)
        return F.conv2d(x, wq, self.layer.bias, self.layer.stride, self.layer.padding, 1, self.layer.groups)


def test_chain_of_int8_kernels(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(FQ(-3, 3), QConv(nn.Conv2d(3, 8, 3, padding=1)), nn.ReLU(), FQ(0, 4),
                          QConv(nn.Conv2d(8, 8, 3, 2, 1, groups=8)), FQ(-4, 4), nn.Flatten(),
                          QConv(nn.Linear(8 * 4 * 4, 5)), FQ(-6, 6)).eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "q.tflite"
    TFLiteConverter(model, x, path).convert()
    codes = op_codes(path)
    assert codes.count("QUANTIZE") == 1 and codes.count("DEQUANTIZE") == 1
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(codes)
    assert verify(model, x, path).max_abs_error <= 2 * 12 / 255  # within two output steps


def test_model_quantized_by_slimkit_ptq(tmp_path):
    """End to end with slimkit's quantizer: int8 kernels, and the model still usable after conversion."""
    from slimkit.algorithms import quantization
    from slimkit.converter.verify import run_tflite

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    x = torch.randn(4, 3, 8, 8)
    config = [{"quant_types": ["weight", "input", "output"], "quant_bits": {"weight": 8, "input": 8, "output": 8},
               "op_types": ["Conv2d", "Linear"]}]
    ptq = quantization.PostTrainingQuantizer(model, config, algorithm="minmax", dummy_input=x)
    ptq.compress()
    ptq.calibrate([x, torch.randn(4, 3, 8, 8)])
    model.eval()
    expected = model(x[:1]).detach().numpy()
    path = tmp_path / "ptq.tflite"
    TFLiteConverter(model, x[:1], path).convert()
    codes = op_codes(path)
    assert codes.count("CONV_2D") == 2 and "FULLY_CONNECTED" in codes
    _, sg = read_model(path)
    int8_ops = {sg.Tensors(sg.Operators(i).Inputs(1)).Type() for i, c in enumerate(codes)
                if c in ("CONV_2D", "FULLY_CONNECTED")}
    assert int8_ops == {tflite.TensorType.INT8}
    got = run_tflite(path, [x[:1].permute(0, 2, 3, 1).numpy()])[0]
    assert np.abs(got - expected).max() <= 2 * np.abs(expected).max() / 127
    with torch.no_grad():  # exporting must not leave fake tensors in the quantizer's caches
        after = model(x[:1])
    assert type(after) is torch.Tensor and np.array_equal(after.numpy(), expected)
    # verify evaluates slimkit's quantized model with the int8 kernels' arithmetic: the file matches it exactly
    result = verify(model, x[:1], path)
    assert result.emulated_integer and result.max_abs_error == 0.0
    plain = verify(model, x[:1], path, emulate_integer=False)
    assert not plain.emulated_integer and plain.max_abs_error <= 2 * np.abs(expected).max() / 127


def test_quantize_io_gives_int8_inputs_and_outputs(tmp_path):
    from slimkit.converter.verify import run_tflite

    torch.manual_seed(0)
    model, x = FakeQuantNet().eval(), torch.randn(1, 3, 8, 8)
    path = tmp_path / "q.tflite"
    TFLiteConverter(model, x, path, quantize_io=True).convert()
    assert op_codes(path) == ["CONV_2D"]
    _, sg = read_model(path)
    inp, out = sg.Tensors(sg.Inputs(0)), sg.Tensors(sg.Outputs(0))
    assert inp.Type() == out.Type() == tflite.TensorType.INT8
    q_in = np.clip(np.round(x.permute(0, 2, 3, 1).numpy() / 0.02) + 3, -128, 127).astype(np.int8)
    got = (run_tflite(path, [q_in])[0].astype(np.float32) + 128) * 0.01
    expected = model(x).detach().permute(0, 2, 3, 1).numpy()
    assert np.abs(got - expected).max() <= 0.01 + 1e-6


def test_quantized_input_stats_on_float_model(tmp_path):
    from slimkit.converter.verify import run_tflite

    model = nn.Conv2d(3, 4, 3).eval()
    path = tmp_path / "f.tflite"
    TFLiteConverter(model, torch.randn(1, 3, 8, 8), path, quantized_input_stats=[(128.0, 127.5)]).convert()
    assert op_codes(path) == ["DEQUANTIZE", "CONV_2D"]
    q = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    got = run_tflite(path, [q])[0]
    expected = model(torch.from_numpy((q.astype(np.float32) - 128) / 127.5).permute(0, 3, 1, 2))
    np.testing.assert_allclose(got, expected.detach().permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_int8_residual_add(tmp_path):
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_in, self.conv, self.q_conv, self.q_out = FQ(-3, 3), QConv(nn.Conv2d(4, 4, 3, padding=1)), \
                FQ(-4, 4), FQ(-6, 6)

        def forward(self, x):
            x = self.q_in(x)
            return self.q_out(torch.relu(self.q_conv(self.conv(x)) + x))

    torch.manual_seed(0)
    model, x = Residual().eval(), torch.randn(1, 4, 8, 8)
    path = tmp_path / "r.tflite"
    TFLiteConverter(model, x, path).convert()
    assert op_codes(path) == ["QUANTIZE", "CONV_2D", "ADD", "DEQUANTIZE"]
    assert verify(model, x, path).max_abs_error <= 2 * 12 / 255
