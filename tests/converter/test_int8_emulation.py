"""``Quantizer.emulate_integer``: the fake-quant model computes exactly the integers of the converted int8 file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimkit import models
from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.errors import SlimkitError
from slimkit.frameworks.torch.int8_emulation import add_multipliers
from tests.converter.test_int8 import assert_bit_exact, quantize_with, settle_bn

WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


class Binary(nn.Module):
    """``a <op> b`` of two model inputs (a Linear so that the config selects a layer)."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.head = nn.Linear(256, 2)

    def forward(self, a, b):
        out = {"add": a + b, "sub": a - b, "mul": a * b}[self.op]
        return out, self.head(a)


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("spread", [(1.0, 1.0), (3.0, 0.5), (0.1, 2.0)])
def test_binary_ops_match_litert_on_every_int8_pair(tmp_path, op, spread):
    torch.manual_seed(len(op))
    a, b = torch.randn(1, 256, 256) * spread[0], torch.randn(1, 256, 256) * spread[1]
    model = Binary(op).eval()
    quantizer = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=(a, b))
    quantizer.compress()
    quantizer.calibrate([((a, b), None)])
    path = tmp_path / "binary.tflite"
    TFLiteConverter(model, (a, b), path).convert()
    grid_a, grid_b = (quantizer.graph_params[f"input/{i}"] for i in range(2))
    qa, qb = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    feeds = [torch.from_numpy(((q - p.zero_point[0]) * p.scale[0]).astype(np.float32).reshape(1, 256, 256))
             for q, p in ((qa, grid_a), (qb, grid_b))]  # all 65536 pairs of int8 inputs
    from slimkit.converter.verify import run_tflite

    got = run_tflite(path, [f.numpy() for f in feeds])
    with torch.no_grad(), quantizer.emulate_integer():
        expected = model(*feeds)
    index = 0 if got[0].shape == (1, 256, 256) else 1
    np.testing.assert_array_equal(got[index], expected[0].numpy())


class ConvBlock(nn.Module):
    """Conv + BN + ReLU6, depthwise conv + BN, global average pool, linear: every requantizing kernel of MobileNetV2."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.dw(self.conv(x)), 1), 1))


def test_kernels_match_litert_exactly(tmp_path):
    shape = (3, 48, 48)
    model, x, quantizer = quantize_with(settle_bn(ConvBlock(), shape), shape)
    path = tmp_path / "block.tflite"
    TFLiteConverter(model, x, path).convert()
    torch.manual_seed(3)
    assert_bit_exact(model, quantizer, path, [x] + [torch.randn(1, *shape) * 1.5 for _ in range(3)])


def test_mobilenet_v2_at_224_is_bit_exact(tmp_path):
    """A randomly initialised MobileNetV2 at 224x224: the plain fake-quant model is a step or more off on many
    logits (each rounding tie it resolves differently is passed on); the emulated one gives every logit exactly."""
    shape = (3, 224, 224)
    model, x, quantizer = quantize_with(settle_bn(models.mobilenet_v2(), shape), shape)
    path = tmp_path / "mobilenet_v2.tflite"
    TFLiteConverter(model, x, path).convert()
    torch.manual_seed(5)
    assert_bit_exact(model, quantizer, path, [torch.randn(1, *shape) for _ in range(2)])


def test_resnet_add_relu_is_one_kernel(tmp_path):
    """ResNet's ``relu(out + identity)`` is one ADD with a fused ReLU on the ReLU's output grid."""
    shape = (3, 64, 64)
    model, x, quantizer = quantize_with(settle_bn(models.resnet18(num_classes=10), shape), shape)
    assert len(quantizer.graph_plan.fused_activations) == 8
    path = tmp_path / "resnet18.tflite"
    TFLiteConverter(model, x, path).convert()
    assert_bit_exact(model, quantizer, path, [x, torch.randn(1, *shape)])


def test_emulation_is_left_on_exit_and_differs_only_at_ties():
    model, x, quantizer = quantize_with(settle_bn(ConvBlock(), (3, 16, 16)), (3, 16, 16))
    with torch.no_grad():
        plain = model(x)
        with quantizer.emulate_integer():
            exact = model(x)
            assert quantizer.integer_arithmetic == "xnnpack"
        assert quantizer.integer_arithmetic is None
        again = model(x)
    assert torch.equal(plain, again)
    step = float(quantizer.params["fc"]["output"].scale[0])
    assert float((plain - exact).abs().max()) <= step * 1.001


def test_xnnpack_add_multipliers():
    # ratios 0.5 and 0.25: the larger has exponent -1, so shift 21 and multipliers 2**20, 2**19
    assert add_multipliers(0.5, 0.25) == (2 ** 20, 2 ** 19, 21)
    assert add_multipliers(0.75, -0.25) == (3 * 2 ** 19, -(2 ** 19), 21)
    assert add_multipliers(2.0 ** 8, 1.0) is None and add_multipliers(2.0 ** -11, 2.0 ** -12) is None


def test_verify_uses_the_emulation_for_models_it_can_emulate(tmp_path):
    from slimkit.converter import verify

    model, x, _ = quantize_with(settle_bn(ConvBlock(), (3, 16, 16)), (3, 16, 16))
    path = tmp_path / "block.tflite"
    TFLiteConverter(model, x, path).convert()
    result = verify(model, torch.randn(1, 3, 16, 16), path)
    assert result.emulated_integer and result.max_abs_error == 0.0 and result.ok()
    dorefa = nn.Sequential(nn.Linear(4, 3)).eval()  # weights only, 4 bits: nothing to emulate, plain comparison
    from slimkit.algorithms.quantization import DoReFaQuantizer

    DoReFaQuantizer(dorefa, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Linear"]}]).compress()
    TFLiteConverter(dorefa, torch.randn(1, 4), tmp_path / "dorefa.tflite").convert()
    assert not verify(dorefa, torch.randn(1, 4), tmp_path / "dorefa.tflite").emulated_integer


def test_float_islands_of_the_file_keep_their_fake_quant_value(tmp_path, monkeypatch):
    """ELU has no int8 kernel in the file (it runs in float between DEQUANTIZE and QUANTIZE): the emulation computes
    only the two convolutions' kernels and leaves it to the fake-quant model. (A transposed convolution was this
    island until it became an int8 TRANSPOSE_CONV.)"""
    from slimkit.converter.verify import int8_ops
    from slimkit.frameworks.torch import int8_emulation
    from tests.converter.conftest import op_codes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ELU(), nn.Conv2d(8, 4, 1)).eval()
    model, x, quantizer = quantize_with(model, (3, 8, 8))
    path = tmp_path / "island.tflite"
    TFLiteConverter(model, x, path).convert()
    assert "ELU" in op_codes(path) and "ELU" not in int8_ops(path) and op_codes(path).count("CONV_2D") == 2
    emulated = []
    kernel = int8_emulation.kernel
    monkeypatch.setattr(int8_emulation, "kernel", lambda *a: emulated.append(a[2].shape) or kernel(*a))
    assert_bit_exact(model, quantizer, path, [x])
    assert emulated == [(8, 3, 3, 3), (4, 8, 1, 1)]


def test_emulation_errors_name_the_problem():
    model, x, quantizer = quantize_with(settle_bn(ConvBlock(), (3, 16, 16)), (3, 16, 16))
    with pytest.raises(SlimkitError, match="'tflm'.*xnnpack"), quantizer.emulate_integer("tflm"):
        pass
    model.train()
    with pytest.raises(SlimkitError, match="layer 'conv.0' runs in training mode.*model.eval"), \
            quantizer.emulate_integer():
        model(x)
    weights_only = nn.Sequential(nn.Linear(4, 3)).eval()
    ptq = PostTrainingQuantizer(weights_only, [{"quant_types": ["weight"], "op_types": ["Linear"]}])
    ptq.compress()
    ptq.calibrate([torch.randn(2, 4)])
    with pytest.raises(SlimkitError, match="layer '0' has no input / output quantization parameters"), \
            torch.no_grad(), ptq.emulate_integer():
        weights_only(torch.randn(2, 4))


def test_folded_weight_scales_are_the_quantizers(tmp_path):
    """The file carries the quantizer's own per-channel weight scales (float32), also through BatchNorm folding, whose
    divide-then-multiply leaves the weights within float32 rounding of their grid."""
    from tests.converter.conftest import read_model

    model, x, quantizer = quantize_with(settle_bn(ConvBlock(), (3, 16, 16)), (3, 16, 16))
    path = tmp_path / "block.tflite"
    TFLiteConverter(model, x, path).convert()
    _, graph = read_model(path)
    file_scales = [graph.Tensors(i).Quantization().ScaleAsNumpy() for i in range(graph.TensorsLength())
                   if graph.Tensors(i).Quantization() is not None and graph.Tensors(i).Quantization().ScaleLength() > 1
                   and graph.Tensors(i).Type() == 9]  # INT8 per-channel: the three weights
    expected = [quantizer.params[name]["weight"].scale.astype(np.float32) for name in ("conv.0", "dw.0", "fc")]
    assert len(file_scales) == 3
    for scales in expected:
        assert any(got.shape == scales.shape and np.array_equal(got, scales) for got in file_scales)


class InPlaceResidual(nn.Module):
    """A residual block written as Hugging Face's ResNet writes it (``hidden_state += residual``), or with another
    in-place form of add / subtract / multiply."""

    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.shortcut = nn.Conv2d(8, 8, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        hidden, residual = self.branch(x), self.shortcut(x)
        if self.style == "+=":
            hidden += residual
        elif self.style == "add_":
            hidden.add_(residual)  # return value dropped: ``hidden`` itself must hold the ADD's output
        elif self.style == "-=":
            hidden -= residual
        else:
            hidden *= residual
        return self.act(hidden)


@pytest.mark.parametrize("style", ["+=", "add_", "-=", "*="])
def test_in_place_ops_are_emulated_from_their_inputs(tmp_path, style):
    """The emulation computes an in-place add / sub / mul from its inputs as they were before the op overwrote one."""
    model, x, quantizer = quantize_with(settle_bn(InPlaceResidual(style), (8, 8, 8)), (8, 8, 8))
    path = tmp_path / "inplace.tflite"
    TFLiteConverter(model, x, path).convert()
    torch.manual_seed(4)
    assert_bit_exact(model, quantizer, path, [x] + [torch.randn(1, 8, 8, 8) * 2 for _ in range(3)])


def test_in_place_ops_train_under_qat():
    from slimkit.algorithms.quantization import QATQuantizer

    torch.manual_seed(0)
    model, x = InPlaceResidual("*="), torch.randn(2, 8, 8, 8)
    QATQuantizer(model, WHOLE_GRAPH, dummy_input=x[:1]).compress()
    model.train()
    model(x).sum().backward()  # the in-place product's input is kept for its gradient, not overwritten
    assert model.shortcut.module.weight.grad.abs().sum() > 0 and model.branch[0].module.weight.grad is not None
