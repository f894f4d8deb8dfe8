"""Profile ``'tflite_int16x8'``: int16 activations, int8 weights, int64 biases, run by LiteRT's builtin 16x8 kernels;
``emulate_integer()`` gives the file's integers bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import tflite
import torch
import torch.nn.functional as F
from ai_edge_litert.interpreter import OpResolverType
from torch import nn

from slimkit import models
from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.converter import TFLiteConverter, verify
from slimkit.errors import ConfigError, UnsupportedOpError
from slimkit.utils.litert import interpreter
from tests.converter.test_int8 import settle_bn, tensor_types, train_digits_qat
from tests.converter.test_int8_xnnpack import PreActivation

WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]
GRAPH_INPUTS = [{"quant_types": ["weight", "output"], "op_types": ["default"]}]  # inputs: the grids of the graph
PROFILE = "tflite_int16x8"


class Residual(nn.Module):
    """Conv, residual add, depthwise conv + ReLU6, concat, 1x1 conv, subtract, multiply, average pool, mean, linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c3, self.fc = nn.Conv2d(16, 8, 1), nn.Linear(8, 5)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = self.c2(a) + a
        c = F.relu6(self.dw(b))
        d = (self.c3(torch.cat([b, c], 1)) - b) * a
        return d, self.fc(torch.mean(F.avg_pool2d(d, 2), (2, 3)))


def run_builtin(path, x: torch.Tensor) -> list[np.ndarray]:
    """The file's outputs on LiteRT's builtin kernels (no XNNPACK: it takes no int16), in PyTorch's layout."""
    runner = interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner.set_tensor(runner.get_input_details()[0]["index"], x.permute(0, 2, 3, 1).numpy())
    runner.invoke()
    outs = [runner.get_tensor(d["index"]) for d in runner.get_output_details()]
    return [np.moveaxis(o, -1, 1) if o.ndim == 4 else o for o in outs]


def convert_16x8(model: nn.Module, shape, tmp_path, quantizer_class=PostTrainingQuantizer, config=WHOLE_GRAPH,
                 **kwargs):
    torch.manual_seed(0)
    x = torch.randn(1, *shape)
    quantizer = quantizer_class(model, config, dummy_input=x, profile=PROFILE, **kwargs)
    quantizer.compress()
    return x, quantizer


def assert_16x8_file(path) -> list[str]:
    """Every op's activations are int16, weights int8 per channel, biases int64 (float only at the two ends)."""
    codes = []
    for code, ins, outs in tensor_types(path):
        codes.append(code)
        acts = ins[:1] if code in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN", "RESHAPE") else ins
        if code == "QUANTIZE":
            acts = [t for t in acts if t.Type() != tflite.TensorType.FLOAT32]
        if code == "DEQUANTIZE":
            outs = []
        assert all(t.Type() == tflite.TensorType.INT16 for t in acts + outs), code
        assert all(t.Quantization().ZeroPointAsNumpy().tolist() == [0] for t in acts + outs), code
        if code in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            assert ins[1].Type() == tflite.TensorType.INT8 and ins[1].Quantization().ScaleLength() > 1
            assert ins[2].Type() == tflite.TensorType.INT64
    return codes


def assert_bit_exact(model, quantizer, path, inputs) -> None:
    for x in inputs:
        with torch.no_grad(), quantizer.emulate_integer():
            expected = model(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = run_builtin(path, x)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g.reshape(e.shape), e.numpy())


def test_digits_cnn_ptq_is_bit_exact(tmp_path):
    model = models.DigitsCNN().eval()
    x, ptq = convert_16x8(model, (1, 8, 8), tmp_path, algorithm="minmax")
    ptq.calibrate([torch.randn(4, 1, 8, 8) for _ in range(2)])
    path = tmp_path / "digits16.tflite"
    TFLiteConverter(model, x, path).convert()
    assert assert_16x8_file(path) == ["QUANTIZE", "CONV_2D", "CONV_2D", "MAX_POOL_2D", "CONV_2D", "MEAN",
                                      "FULLY_CONNECTED", "DEQUANTIZE"]
    assert ptq.params["conv1"]["output"].bits == 16 and ptq.params["conv1"]["weight"].bits == 8
    torch.manual_seed(1)
    assert_bit_exact(model, ptq, path, [x] + [torch.randn(1, 1, 8, 8) * 1.5 for _ in range(4)])
    result = verify(model, x, path)  # LiteRT's default path (XNNPACK leaves the int16 ops to the builtin kernels)
    assert result.max_abs_error == 0.0 and result.max_steps == 0.0 and result.approximate_ops == ()
    assert result.emulated_ops == ("CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED", "MAX_POOL_2D", "MEAN", "QUANTIZE")


def test_residual_model_ptq_is_bit_exact(tmp_path):
    model = Residual().eval()
    x, ptq = convert_16x8(model, (3, 12, 12), tmp_path, algorithm="minmax")
    ptq.calibrate([torch.randn(4, 3, 12, 12) for _ in range(2)])
    path = tmp_path / "residual16.tflite"
    TFLiteConverter(model, x, path).convert()
    codes = assert_16x8_file(path)
    assert {"ADD", "SUB", "MUL", "DEPTHWISE_CONV_2D", "CONCATENATION", "AVERAGE_POOL_2D", "MEAN"} <= set(codes)
    torch.manual_seed(2)
    assert_bit_exact(model, ptq, path, [x] + [torch.randn(1, 3, 12, 12) * s for s in (0.5, 1.0, 2.0)])


def test_batchnorm_folded_biases_are_the_quantizers(tmp_path):
    """A conv + BatchNorm whose int64 bias grid (input scale x weight scale, ~1e-7) is finer than float32 resolves
    the bias: the file holds the bias the quantizer folded, not a float32 refold of it (which moved 27 of these 64
    biases by up to 3 steps, and outputs by a step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(320, 64, 1), nn.BatchNorm2d(64))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2), model[1].weight.uniform_(0.5, 2)
    model.eval()
    x, ptq = convert_16x8(model, (320, 7, 7), tmp_path, algorithm="minmax")
    ptq.calibrate([torch.randn(4, 320, 7, 7)])
    path = tmp_path / "conv_bn16.tflite"
    TFLiteConverter(model, x, path).convert()
    torch.manual_seed(4)
    assert_bit_exact(model, ptq, path, [torch.randn(1, 320, 7, 7) for _ in range(3)])


class ConvBnResidual(nn.Module):
    """Conv + BatchNorm (no activation) then a residual add: EfficientNet's block ending."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x)) + x


def test_add_after_folded_batchnorm_stays_int16(tmp_path):
    """The int64-bias capture traces the BatchNorm-folded copy: the residual add after the folded BatchNorm is
    quantized there too (it lost its path, so the add and the conv after it were float)."""
    model = nn.Sequential(ConvBnResidual(), nn.Conv2d(8, 4, 1)).eval()
    x, ptq = convert_16x8(model, (8, 6, 6), tmp_path, config=GRAPH_INPUTS, algorithm="minmax")
    ptq.calibrate([torch.randn(4, 8, 6, 6)])
    path = tmp_path / "conv_bn_add16.tflite"
    TFLiteConverter(model, x, path).convert()
    assert assert_16x8_file(path) == ["QUANTIZE", "CONV_2D", "ADD", "CONV_2D", "DEQUANTIZE"]
    torch.manual_seed(5)
    assert_bit_exact(model, ptq, path, [torch.randn(1, 8, 6, 6) for _ in range(3)])


def test_bias_past_float32_integers_right_after_calibration(tmp_path):
    """A first conv (its input grid known from the graph) whose int64 bias exceeds 2**24 steps, converted right after
    calibration: its bias is rounded onto the calibrated input grid as the emulation's is (the capture used to take
    the unrounded bias, some steps off once past float32's 24 bits)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU()).eval()
    x, calibration = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 8, 8)
    with torch.no_grad():  # 2**25 to 2**27 steps of the int64 grid: a float32 there resolves 2 to 8 steps
        steps = calibration.abs().max() / 32767 * model[0].weight.abs().amax((1, 2, 3)) / 127
        model[0].bias.copy_(steps * torch.linspace(2 ** 25, 2 ** 27, 64))
    ptq = PostTrainingQuantizer(model, GRAPH_INPUTS, dummy_input=x, profile=PROFILE, algorithm="minmax")
    ptq.compress()
    ptq.calibrate([calibration])
    path = tmp_path / "big_bias16.tflite"
    TFLiteConverter(model, x, path).convert()
    weight_scale = ptq.params["0"]["weight"].scale.astype(np.float32)
    scale = np.float32(ptq.params["0"]["input_from_graph"].scale[0]) * weight_scale  # float32, as the file's
    with torch.no_grad():  # the integers emulate_integer() adds: its bias over the file's float32 bias scale
        expected = np.round(model[0].kernel(ptq, ptq.layers[0]).bias.double().numpy() / scale.astype(np.float64))
    runner = interpreter(model_path=str(path))
    (bias,) = [runner.get_tensor(d["index"]) for d in runner.get_tensor_details() if d["dtype"] == np.int64]
    assert expected.min() > 2 ** 25 and bias.tolist() == expected.astype(np.int64).tolist()
    torch.manual_seed(6)
    assert_bit_exact(model, ptq, path, [x] + [torch.randn(1, 3, 8, 8) for _ in range(3)])


def test_qat_digits_cnn_is_bit_exact(tmp_path):
    model = models.DigitsCNN()
    x, qat = convert_16x8(model, (1, 8, 8), tmp_path, quantizer_class=QATQuantizer)
    train_digits_qat(model, qat)
    path = tmp_path / "qat16.tflite"
    TFLiteConverter(model, x, path).convert()
    assert_16x8_file(path)
    torch.manual_seed(3)
    assert_bit_exact(model, qat, path, [torch.randn(1, 1, 8, 8) for _ in range(3)])


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 32)

    def forward(self, x):
        y = self.fc(x)
        return torch.sigmoid(y), torch.tanh(y), torch.softmax(y, -1)


def test_fixed_output_activations_are_written_on_int16_and_emulated(tmp_path):
    """LOGISTIC / TANH / SOFTMAX on int16 (exactness: tests/converter/test_int16x8_activations.py)."""
    model = Heads().eval()
    x, ptq = convert_16x8(model, (16,), tmp_path, algorithm="minmax")
    ptq.calibrate([torch.randn(64, 16)])
    converter = TFLiteConverter(model, x, tmp_path / "heads16.tflite")
    converter.convert()
    assert [op.code for op in converter.graph.ops if op.outputs[0].dtype == "int16"] == [
        "QUANTIZE", "FULLY_CONNECTED", "LOGISTIC", "TANH", "SOFTMAX"]
    assert all(float(op.outputs[0].quant.scale[0]) == 2.0 ** -15 for op in converter.graph.ops
               if op.code in ("LOGISTIC", "TANH", "SOFTMAX"))
    assert converter.approximate_int8_ops() == []


def test_op_without_a_16x8_kernel_is_named_before_writing(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Hardswish(), nn.Conv2d(4, 2, 3)).eval()
    x, ptq = convert_16x8(model, (1, 8, 8), tmp_path, algorithm="minmax")
    ptq.calibrate([torch.randn(4, 1, 8, 8)])
    path = tmp_path / "hardswish16.tflite"
    with pytest.raises(UnsupportedOpError, match=r"16x8 kernels: 1 \(HARD_SWISH\)\. "):
        TFLiteConverter(model, x, path).convert()
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_float_regions_between_int16_tensors_are_named_before_writing(tmp_path):
    """Several float ops in a row between int16 tensors are refused too (each op used to pass: none both reads a
    DEQUANTIZE and feeds a QUANTIZE): a grouped ConvTranspose2d (float TRANSPOSE_CONVs per group, CONCATENATION, its
    ReLU) and a standalone BatchNorm with a zero scale (no depthwise form: MUL then ADD)."""
    up = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2), nn.ReLU(),
                       nn.Conv2d(6, 4, 1)).eval()
    bn = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        bn[2].weight.copy_(torch.tensor([1.0, 0.0, 2.0, 0.5]))
    cases = [(up, r"1\.module \(TRANSPOSE_CONV\), 1\.module \(CONCATENATION\), 2 \(RELU\)\. "),
             (bn, r"2 \(MUL\), 2 \(ADD\)\. ")]
    for model, names in cases:
        x, ptq = convert_16x8(model, (4, 6, 6), tmp_path, algorithm="minmax")
        ptq.calibrate([torch.randn(4, 4, 6, 6)])
        with pytest.raises(UnsupportedOpError, match=r"16x8 kernels: " + names):
            TFLiteConverter(model, x, tmp_path / "float16.tflite").convert()
        assert list(tmp_path.iterdir()) == []


def test_profile_fixes_activation_bits():
    model = nn.Sequential(nn.Conv2d(1, 4, 3))
    config = [{"quant_types": ["weight", "output"], "quant_bits": {"weight": 8, "output": 8}, "op_types": ["Conv2d"]}]
    with pytest.raises(ConfigError, match=r"gives 'output' 8 bits, but the profile's kernels take 16-bit"):
        PostTrainingQuantizer(model, config, profile=PROFILE)
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight", "output"], "quant_bits": 8,
                                         "op_types": ["Conv2d"]}], profile=PROFILE)
    assert ptq.states["0"].bits[ptq.states["0"].types[1]] == 16


@pytest.mark.parametrize("op", ["add", "sub"])
def test_general_int16_add_matches_litert_on_a_million_pairs(tmp_path, op):
    """The general int16 ADD rounds each scaled input once (half up), SUB in the 32-bit form (double rounding): ADD in
    that form differed from LiteRT on 10 of these 1,048,576 outputs (EfficientNet-Lite0's ``_blocks.12`` add: 6187 for
    6186), SUB rounding once on 9. All 65,535 values of one input against random values of the other, builtin
    kernels."""
    from tests.converter.test_int8_emulation import Binary

    torch.manual_seed(3)
    a, b = torch.randn(1, 4096, 256) * 1.3, torch.randn(1, 4096, 256) * 0.7
    model = Binary(op).eval()
    quantizer = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=(a, b), profile=PROFILE)
    quantizer.compress()
    quantizer.calibrate([((a, b), None)])
    path = tmp_path / "binary16.tflite"
    TFLiteConverter(model, (a, b), path).convert()
    assert op.upper() in assert_16x8_file(path)
    grid_a, grid_b = (quantizer.graph_params[f"input/{i}"] for i in range(2))
    qa = np.resize(np.arange(-32767, 32768), a.numel())
    qb = np.random.default_rng(0).integers(-32767, 32768, b.numel())
    feeds = [torch.from_numpy((q * p.scale[0]).astype(np.float32).reshape(a.shape))
             for q, p in ((qa, grid_a), (qb, grid_b))]
    runner = interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    for detail, feed in zip(runner.get_input_details(), feeds):
        runner.set_tensor(detail["index"], feed.numpy())
    runner.invoke()
    got = [runner.get_tensor(d["index"]) for d in runner.get_output_details()]
    with torch.no_grad(), quantizer.emulate_integer():
        expected = model(*feeds)
    index = 0 if got[0].shape == a.shape else 1
    np.testing.assert_array_equal(got[index], expected[0].numpy())


def test_global_adaptive_pool_is_the_int16_mean(tmp_path):
    """``adaptive_avg_pool2d(x, 1)`` is written as an int16 MEAN and emulated as one (it took the int8 MEAN's
    arithmetic: EfficientNet-Lite0's head pool differed on 12 of 1,280 channels, one step each)."""
    model = nn.Sequential(nn.Conv2d(3, 256, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 4))
    x, ptq = convert_16x8(model.eval(), (3, 9, 9), tmp_path, algorithm="minmax")
    ptq.calibrate([torch.randn(8, 3, 9, 9)])
    path = tmp_path / "pool16.tflite"
    TFLiteConverter(model, x, path).convert()
    assert "MEAN" in assert_16x8_file(path)
    torch.manual_seed(4)
    assert_bit_exact(model, ptq, path, [x] + [torch.randn(1, 3, 9, 9) * s for s in (0.5, 1.0, 1.5, 2.0)])


def test_fully_connected_rounds_once(tmp_path):
    """LiteRT's 16x8 FULLY_CONNECTED scales its int64 sums rounding once (half up): the double-rounding form differed
    on EfficientNet-Lite0's classifier (2 of 1,000 logits) and on this layer's outputs."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(512, 2000)).eval()
    x, ptq = convert_16x8(model, (8, 8, 8), tmp_path, algorithm="minmax")
    ptq.calibrate([torch.randn(16, 8, 8, 8)])
    path = tmp_path / "fc16.tflite"
    TFLiteConverter(model, x, path).convert()
    assert [code for code, _, _ in tensor_types(path)] == ["QUANTIZE", "RESHAPE", "FULLY_CONNECTED", "DEQUANTIZE"]
    torch.manual_seed(5)
    assert_bit_exact(model, ptq, path, [x] + [torch.randn(1, 8, 8, 8) * s for s in (0.5, 1.0, 1.5)])


def test_standalone_batchnorm_is_a_16x8_depthwise_conv(tmp_path):
    """Pre-activation BatchNorms (BN -> ReLU -> conv, and one after a residual add) fold into no conv: each is a 16x8
    1x1 DEPTHWISE_CONV_2D (int8 weights, int64 bias) with its ReLU fused, bit exact (they were float MUL / ADD between
    int16 tensors, not refused: 36 of these 2,560 outputs differed from the emulation)."""
    model = settle_bn(PreActivation(), (3, 8, 8)).eval()
    x, ptq = convert_16x8(model, (3, 8, 8), tmp_path, algorithm="minmax")
    ptq.calibrate([torch.randn(4, 3, 8, 8) for _ in range(2)])
    path = tmp_path / "preact16.tflite"
    TFLiteConverter(model, x, path).convert()
    assert assert_16x8_file(path) == ["QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "CONV_2D", "ADD",
                                      "DEPTHWISE_CONV_2D", "DEQUANTIZE"]
    torch.manual_seed(7)
    assert_bit_exact(model, ptq, path, [x] + [torch.randn(1, 3, 8, 8) * s for s in (0.5, 1.0, 2.0, 4.0)])
