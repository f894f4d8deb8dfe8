"""Full-int8 export of models quantized by slimkit (whole-graph PTQ, 'tflite' profile)."""

from __future__ import annotations

import numpy as np
import pytest
import tflite
import torch
import torch.nn.functional as F
from torch import nn

from slimkit import models
from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.converter.verify import run_tflite
from tests.converter.conftest import conv_options, op_codes, read_model

WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]
INT8_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "CONCATENATION", "MEAN",
            "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "SOFTMAX", "LOGISTIC", "PAD", "PADV2"}


def settle_bn(model: nn.Module, shape, batches: int = 2) -> nn.Module:
    """Running statistics from random data, so a randomly initialised deep net keeps its activations O(1)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, *shape))
    return model.eval()


def quantize_with(model: nn.Module, shape, config=None) -> tuple[nn.Module, torch.Tensor, PostTrainingQuantizer]:
    """``model`` PTQ-quantized (minmax on two random batches); returns (model, example input, quantizer)."""
    torch.manual_seed(1)
    x = torch.randn(1, *shape)
    ptq = PostTrainingQuantizer(model, config or WHOLE_GRAPH, algorithm="minmax", dummy_input=x)
    ptq.compress()
    ptq.calibrate([torch.randn(4, *shape) for _ in range(2)])
    model.eval()
    return model, x, ptq


def quantize(model: nn.Module, shape, config=None) -> tuple[nn.Module, torch.Tensor]:
    return quantize_with(model, shape, config)[:2]


def tensor_types(path):
    """``[(op, [input types of activations], [output types])]`` of a file (constants' types excluded
    except for weights, which are checked separately)."""
    _, sg = read_model(path)
    out = []
    for i, code in enumerate(op_codes(path)):
        op = sg.Operators(i)
        ins = [sg.Tensors(op.Inputs(j)) for j in range(op.InputsLength()) if op.Inputs(j) >= 0]
        outs = [sg.Tensors(op.Outputs(j)) for j in range(op.OutputsLength())]
        out.append((code, ins, outs))
    return out


def assert_all_int8(path, allow_float=()):
    types = tensor_types(path)
    for code, ins, outs in types:
        if code not in INT8_OPS or code in allow_float:
            continue
        act = ins[:1] if code in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN", "RESHAPE", "PAD",
                                  "PADV2") else ins
        assert all(t.Type() == tflite.TensorType.INT8 for t in act + outs), (code, [t.Type() for t in ins + outs])
        if code in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            w, b = ins[1], ins[2] if len(ins) > 2 else None
            assert w.Type() == tflite.TensorType.INT8 and w.Quantization().ScaleLength() > 1  # per channel
            axis = 3 if code == "DEPTHWISE_CONV_2D" else 0
            assert w.Quantization().QuantizedDimension() == axis
            if b is not None:
                assert b.Type() == tflite.TensorType.INT32
                in_scale = ins[0].Quantization().ScaleAsNumpy()[0]
                np.testing.assert_allclose(b.Quantization().ScaleAsNumpy(),
                                           in_scale * w.Quantization().ScaleAsNumpy(), rtol=1e-5)
    codes = [c for c, _, _ in types]
    return codes


def output_step(path) -> float:
    _, sg = read_model(path)
    codes = op_codes(path)
    last = sg.Operators(len(codes) - 1)
    assert codes[-1] == "DEQUANTIZE"
    return float(sg.Tensors(last.Inputs(0)).Quantization().ScaleAsNumpy()[0])


def litert_output(path, x) -> np.ndarray:
    """The file's (float) output for ``x``, in PyTorch's layout."""
    got = run_tflite(path, [x.permute(0, 2, 3, 1).numpy() if x.dim() == 4 else x.numpy()])[0]
    return np.moveaxis(got, -1, 1) if got.ndim == 4 else got


def parity(model, x, path) -> float:
    """Fraction of output elements within one output quantization step of the fake-quant model."""
    with torch.no_grad():
        expected = model(x).numpy()
    got = litert_output(path, x).reshape(expected.shape)
    return float((np.abs(got - expected) <= output_step(path) * 1.001).mean())


def assert_bit_exact(model, quantizer, path, inputs) -> None:
    """Under ``emulate_integer`` the fake-quant model gives exactly the file's integers on every input."""
    for x in inputs:
        with torch.no_grad(), quantizer.emulate_integer():
            expected = model(x).numpy()
        np.testing.assert_array_equal(litert_output(path, x).reshape(expected.shape), expected)


def train_digits_qat(model: nn.Module, qat, steps: int = 3) -> None:
    """``steps`` SGD steps of the QAT ``model`` (8x8 digit-shaped random batches of 16, random labels), each followed
    by ``qat.step()``; the model is left in eval mode."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(16, 1, 8, 8)), torch.randint(0, 10, (16,))).backward()
        optimizer.step()
        qat.step()
    model.eval()


def check_model(build, shape, tmp_path):
    torch.manual_seed(0)
    model, x, quantizer = quantize_with(settle_bn(build(), shape), shape)
    path = tmp_path / "int8.tflite"
    TFLiteConverter(model, x, path).convert()
    codes = assert_all_int8(path)
    # float I/O: QUANTIZE first, DEQUANTIZE last, nothing float in between
    assert codes[0] == "QUANTIZE" and codes[-1] == "DEQUANTIZE"
    assert codes.count("QUANTIZE") == 1 and codes.count("DEQUANTIZE") == 1, codes
    assert parity(model, x, path) >= 0.99
    assert_bit_exact(model, quantizer, path, [x, torch.randn(2, *shape)[:1]])
    return codes


def test_digits_cnn_whole_graph_ptq(tmp_path):
    codes = check_model(models.DigitsCNN, (1, 8, 8), tmp_path)
    assert {"CONV_2D", "MAX_POOL_2D", "MEAN", "FULLY_CONNECTED"} <= set(codes)


@pytest.mark.slow
def test_resnet18_whole_graph_ptq(tmp_path):
    codes = check_model(lambda: models.resnet18(num_classes=10), (3, 32, 32), tmp_path)
    assert codes.count("ADD") == 8 and "MAX_POOL_2D" in codes


@pytest.mark.slow
def test_mobilenet_v2_whole_graph_ptq(tmp_path):
    codes = check_model(lambda: models.mobilenet_v2(num_classes=10, width_mult=0.35), (3, 32, 32), tmp_path)
    assert {"DEPTHWISE_CONV_2D", "ADD", "MEAN"} <= set(codes)


class Branches(nn.Module):
    """Functional cat, avg-pool, sigmoid, hardswish, softmax and reshape between quantized convs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], 1)
        y = F.avg_pool2d(F.hardswish(self.c(y)), 2)
        return torch.softmax(self.fc(y.flatten(1)), -1)


def test_functional_ops_are_int8(tmp_path):
    torch.manual_seed(0)
    model, x = quantize(Branches().eval(), (3, 8, 8))
    path = tmp_path / "b.tflite"
    TFLiteConverter(model, x, path).convert()
    codes = assert_all_int8(path)
    assert {"CONCATENATION", "LOGISTIC", "HARD_SWISH", "AVERAGE_POOL_2D", "SOFTMAX"} <= set(codes), codes
    assert "TRANSPOSE" not in codes  # flatten -> fake quant -> Linear reorders the weight columns
    at = codes.index("HARD_SWISH")  # float between int8 tensors: XNNPACK takes no int8 HARD_SWISH
    assert codes[at - 1:at + 2] == ["DEQUANTIZE", "HARD_SWISH", "QUANTIZE"], codes
    assert codes[0] == "QUANTIZE" and codes.count("DEQUANTIZE") == 2, codes  # QUANTIZE inside: requantize only
    _, sg = read_model(path)
    for i, code in enumerate(codes):
        if code in ("SOFTMAX", "LOGISTIC"):  # TFLite's fixed int8 output parameters
            q = sg.Tensors(sg.Operators(i).Outputs(0)).Quantization()
            assert (q.ScaleAsNumpy()[0], q.ZeroPointAsNumpy()[0]) == (np.float32(1 / 256), -128)
    assert parity(model, x, path) >= 0.99


@pytest.mark.parametrize("action", ["disable", "rewrite"])
def test_float_layer_is_an_island(tmp_path, action):
    config = WHOLE_GRAPH + [{"quant_types": ["input", "weight", "output"], "op_names": ["conv2"],
                             "quantize_op_action": action}]
    torch.manual_seed(0)
    model, x = quantize(settle_bn(models.DigitsCNN(), (1, 8, 8)), (1, 8, 8), config)
    path = tmp_path / "d.tflite"
    TFLiteConverter(model, x, path).convert()
    types = tensor_types(path)
    float_convs = [k for k, (c, ins, _) in enumerate(types) if c == "CONV_2D" and ins[0].Type() ==
                   tflite.TensorType.FLOAT32]
    assert len(float_convs) == 1, [c for c, _, _ in types]
    k = float_convs[0]
    codes = [c for c, _, _ in types]
    assert codes[k - 1] == "DEQUANTIZE" and "QUANTIZE" in codes[k + 1:k + 3], codes
    assert_all_int8(path, allow_float=("CONV_2D", "MAX_POOL_2D"))  # the pool reads the float island
    assert sum(c == "CONV_2D" and ins[0].Type() == tflite.TensorType.INT8 for c, ins, _ in types) == 2
    assert parity(model, x, path) >= 0.99


@pytest.mark.parametrize("io", ["int8", "uint8"])
def test_quantize_io_with_input_stats(tmp_path, io):
    shape = (1, 8, 8)
    torch.manual_seed(0)
    model, x = quantize(settle_bn(models.DigitsCNN(), shape), shape)
    mean, std = (128.0, 127.5) if io == "uint8" else (0.0, 127.5)
    path = tmp_path / f"{io}.tflite"
    TFLiteConverter(model, x, path, quantize_io=io, quantized_input_stats=[(mean, std)]).convert()
    _, sg = read_model(path)
    expected_type = tflite.TensorType.UINT8 if io == "uint8" else tflite.TensorType.INT8
    inp, out = sg.Tensors(sg.Inputs(0)), sg.Tensors(sg.Outputs(0))
    assert inp.Type() == out.Type() == expected_type
    assert inp.Quantization().ScaleAsNumpy()[0] == np.float32(1 / std)
    assert inp.Quantization().ZeroPointAsNumpy()[0] == int(mean)
    codes = op_codes(path)
    assert "DEQUANTIZE" not in codes and codes[0] == "QUANTIZE"  # requantize from the input stats
    assert all(c != "QUANTIZE" for c in codes[2:-1])
    lo, hi = (0, 255) if io == "uint8" else (-128, 127)
    q = np.random.default_rng(0).integers(lo, hi + 1, (1, 8, 8, 1)).astype(np.uint8 if io == "uint8" else np.int8)
    real = torch.from_numpy((q.astype(np.float32) - mean) / std).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = model(real).numpy()
    o = out.Quantization()
    got = (run_tflite(path, [q])[0].astype(np.float32) - o.ZeroPointAsNumpy()[0]) * o.ScaleAsNumpy()[0]
    step = float(o.ScaleAsNumpy()[0])
    assert (np.abs(got - expected) <= step * 1.001).mean() >= 0.99


def _dead_first_layer() -> nn.Module:
    """conv -> ReLU6 whose outputs are ~1e-12 (a dead layer: calibrated scale far below 6 / 2**31), then a conv."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(), nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        model[0].weight.mul_(1e-12)
        model[0].bias.zero_()
        model[2].bias.zero_()
    return model.eval()


def test_fused_relu6_of_a_dead_layer_is_dropped(tmp_path):
    """TFLite cannot prepare an int8 kernel whose fused RELU6 bound (6 / scale) overflows int32; the bound
    cannot bind there (the int8 range is [0, ~1e-12]), so the file fuses no activation."""
    model, x = quantize(_dead_first_layer(), (3, 6, 6))
    path = tmp_path / "dead.tflite"
    TFLiteConverter(model, x, path).convert()
    assert conv_options(path)[0] == ("CONV_2D", tflite.Padding.SAME, tflite.ActivationFunctionType.NONE)
    assert parity(model, x, path) == 1.0


def test_int32_bias_fits_after_a_dead_layer(tmp_path):
    """The second conv's input scale is floored (quantizer's parameters) so its bias fits int32: no clipping."""
    import warnings

    from slimkit.converter import verify

    model = _dead_first_layer()
    with torch.no_grad():
        model[2].bias.fill_(50.0)
    model, x = quantize(model, (3, 6, 6))
    path = tmp_path / "bias.tflite"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TFLiteConverter(model, x, path).convert()
    assert verify(model, x, path).max_abs_error == 0.0


def test_int32_bias_overflow_warns(tmp_path):
    """Without 'input' in quant_types the layer's input grid is its producer's (no floor there): the converter clips
    the bias to int32 and says so."""
    model = _dead_first_layer()
    with torch.no_grad():
        model[2].bias.fill_(50.0)
    model, x = quantize(model, (3, 6, 6), [{"quant_types": ["weight", "output"], "op_types": ["default"]}])
    with pytest.warns(RuntimeWarning, match=r"CONV_2D at 2: bias / \(input scale x weight scale\) exceeds"):
        TFLiteConverter(model, x, tmp_path / "bias.tflite").convert()


def test_qat_model_converts_straight_after_training(tmp_path):
    """A QATQuantizer model converts without freezing it first: its parameters are held fixed while the converter
    traces it (weights moving under training are not read through fake tensors), and the quantizer keeps training."""
    from slimkit.algorithms.quantization import QATQuantizer
    from slimkit.converter import verify

    torch.manual_seed(0)
    model = models.DigitsCNN()
    x = torch.randn(1, 1, 8, 8)
    qat = QATQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["default"]}], dummy_input=x)
    qat.compress()
    train_digits_qat(model, qat)
    path = tmp_path / "qat.tflite"
    TFLiteConverter(model, x, path).convert()
    assert_all_int8(path)
    assert not qat.frozen
    result = verify(model, torch.randn(1, 1, 8, 8), path)
    assert result.emulated_integer and result.max_abs_error == 0.0
