"""Every int8 op the converter writes, op by op: the LiteRT file equals ``emulate_integer()`` exactly (0 steps) on every
int8 input value, on random draws and on inputs past the calibrated range (saturation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.converter.verify import int8_ops, run_tflite
from tests.converter.conftest import op_codes

WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


class Op(nn.Module):
    """``fn`` of the (quantized) model input, beside a Linear so that the config selects a layer."""

    def __init__(self, fn, width: int):
        super().__init__()
        self.fn = fn
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.fn(x), self.head(x)


#: ops written in float between a DEQUANTIZE and a QUANTIZE (XNNPACK takes them only in float), emulated exactly
FLOAT_BETWEEN_INT8 = {"HARD_SWISH"}


def _check(tmp_path, fn, calibration: torch.Tensor, tests: list[torch.Tensor], op: str) -> None:
    """Quantize ``Op(fn)`` on ``calibration``, convert, and compare file and emulation on ``tests``."""
    model = Op(fn, calibration.shape[-1]).eval()
    quantizer = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=calibration[:1])
    quantizer.compress()
    quantizer.calibrate([calibration])
    path = tmp_path / "op.tflite"
    TFLiteConverter(model, calibration[:1], path, dynamic_batch=True).convert()
    if op in FLOAT_BETWEEN_INT8:
        assert op in op_codes(path) and op not in int8_ops(path)
    else:
        assert op in int8_ops(path)
    for x in tests:
        got = run_tflite(path, [x.numpy()])
        with torch.no_grad(), quantizer.emulate_integer():
            expected = model(x)[0].numpy()
        got = next(g for g in got if g.shape == expected.shape)
        np.testing.assert_array_equal(got, expected)


def _grid_inputs(lo: float, hi: float, width: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A calibration batch spanning [lo, hi]; test inputs: every value of the int8 grid that calibration gives (the
    whole table of a unary kernel), random draws, and values far past the range (saturation)."""
    calibration = torch.linspace(lo, hi, 8 * width).reshape(8, width)
    scale = (hi - lo) / 255
    zero = round(-128 - lo / scale)
    rows = -(-256 // width)
    every = ((torch.arange(-128, 128) - zero) * scale).repeat(rows)[:rows * width].reshape(rows, width)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(16, width, generator=generator) * (hi - lo) + lo
    outside = torch.tensor([lo * 4, hi * 4, lo - 1, hi + 1] * (width // 4)).reshape(1, width)
    return calibration, [every, draws, outside]


#: (lo, hi) calibration ranges: random-looking, a power-of-two scale (ties in every rescaling), all-positive, tiny
RANGES = [(-3.1, 5.7), (-8.0, 7.9375), (0.05, 2.3), (-0.02, 0.03), (-11.5, 0.4)]
UNARY = {"LOGISTIC": torch.sigmoid, "TANH": torch.tanh, "HARD_SWISH": F.hardswish,
         "LEAKY_RELU": lambda x: F.leaky_relu(x, 0.1), "SOFTMAX": lambda x: torch.softmax(x, -1),
         "GELU": F.gelu, "GELU_TANH": lambda x: F.gelu(x, approximate="tanh"),
         "SUM": lambda x: x.sum(-1, keepdim=True) * 0.5 + x.sum(-1, keepdim=True)}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_kernels_equal_litert_on_every_int8_input(tmp_path, op):
    for seed, (lo, hi) in enumerate(RANGES):
        calibration, tests = _grid_inputs(lo, hi, 8, seed)
        _check(tmp_path, UNARY[op], calibration, tests, op.removesuffix("_TANH"))


def test_softmax_rows_with_ties_and_long_rows(tmp_path):
    """Rows of equal values (every entry the maximum), one large value among small ones, and rows of 64."""
    calibration = torch.linspace(-6, 6, 512).reshape(8, 64)
    tests = [torch.zeros(2, 64), torch.full((1, 64), 6.0), torch.eye(64)[:4] * 6 - 3,
             torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 3]
    _check(tmp_path, lambda x: torch.softmax(x, -1), calibration, tests, "SOFTMAX")


def _image(fn):
    return lambda x: fn(x.reshape(x.shape[0], 4, 6, 6)).flatten(1)


POOLS = {
    "k2": lambda x: F.avg_pool2d(x, 2),
    "k3_s2_p1_ceil": lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
    "k3_s1_p1_exclude_pad": lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
    "k3_s2_p1_exclude_pad_ceil": lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    "adaptive_3": lambda x: F.adaptive_avg_pool2d(x, 3),
    "k4_s1": lambda x: F.avg_pool2d(x, 4, 1),
}


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_average_pool_equals_litert(tmp_path, pool):
    """Window sums whose average lies on a half step are common: the kernel rounds them away from zero."""
    for seed, (lo, hi) in enumerate(RANGES[:3]):
        calibration, tests = _grid_inputs(lo, hi, 144, seed)
        _check(tmp_path, _image(POOLS[pool]), calibration, tests, "AVERAGE_POOL_2D")


def test_average_pool_1d_equals_litert(tmp_path):
    calibration, tests = _grid_inputs(-2.0, 3.0, 144, 0)
    _check(tmp_path, lambda x: F.avg_pool1d(x.reshape(x.shape[0], 4, 36), 3, 2, 1).flatten(1), calibration, tests,
           "AVERAGE_POOL_2D")


class Rescaled(nn.Module):
    """Inputs on three grids joined (CONCATENATION) or compared (MAXIMUM): the file requantizes each to the
    output's grid first."""

    def __init__(self, join: str):
        super().__init__()
        self.join = join
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        a, b = self.a(x), self.b(x) * 3
        if self.join == "cat":
            return torch.cat([a, b, x], -1)
        return torch.maximum(a, b)


@pytest.mark.parametrize("join", ["cat", "maximum"])
def test_requantized_inputs_equal_litert(tmp_path, join):
    from tests.converter.test_int8 import quantize_with

    model, x, quantizer = quantize_with(Rescaled(join).eval(), (16,))
    path = tmp_path / "join.tflite"
    TFLiteConverter(model, x, path, dynamic_batch=True).convert()
    assert {"CONCATENATION" if join == "cat" else "MAXIMUM", "QUANTIZE"} <= set(int8_ops(path))
    tests = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad(), quantizer.emulate_integer():
        expected = model(tests).numpy()
    np.testing.assert_array_equal(run_tflite(path, [tests.numpy()])[0], expected)


class Attention(nn.Module):
    """Attention written out on 3-D tensors (batch x heads folded): ``q @ k.transpose``, a softmax, ``attn @ v``, and a
    ``torch.bmm`` of two activations on other grids: four int8 BATCH_MATMULs of two activations."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x) * 2
        attn = torch.softmax(q @ k.transpose(-2, -1) * 0.35, -1)
        return torch.bmm(attn @ v, torch.bmm(q.transpose(1, 2), k))


def test_batch_matmul_of_activations_equals_litert(tmp_path):
    """LiteRT's own int8 BATCH_MATMUL (XNNPACK leaves it out): integer sums, TFLite's fixed-point multiplier."""
    from tests.converter.test_int8 import quantize_with

    model, x, quantizer = quantize_with(Attention().eval(), (6, 8))
    path = tmp_path / "attention.tflite"
    TFLiteConverter(model, x, path, dynamic_batch=True).convert()
    assert int8_ops(path).count("BATCH_MATMUL") == 4
    for seed in range(3):
        tests = torch.randn(16, 6, 8, generator=torch.Generator().manual_seed(seed)) * (1 + seed)
        with torch.no_grad(), quantizer.emulate_integer():
            expected = model(tests).numpy()
        np.testing.assert_array_equal(run_tflite(path, [tests.numpy()])[0], expected)


class Pooler(nn.Module):
    """BERT's pooler: the first token's vector (``x[:, 0]``, a slice of int8 values) requantized into a Linear."""

    def __init__(self):
        super().__init__()
        self.norm, self.dense = nn.LayerNorm(16), nn.Linear(16, 4)

    def forward(self, x):
        return torch.tanh(self.dense(self.norm(x)[:, 0]))


def test_selected_values_keep_their_grid(tmp_path):
    from tests.converter.test_int8 import quantize_with

    model, x, quantizer = quantize_with(Pooler().eval(), (5, 16))
    path = tmp_path / "pooler.tflite"
    TFLiteConverter(model, x, path, dynamic_batch=True).convert()
    tests = torch.randn(64, 5, 16, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad(), quantizer.emulate_integer():
        expected = model(tests).numpy()
    np.testing.assert_array_equal(run_tflite(path, [tests.numpy()])[0], expected)


class Gate(nn.Module):
    """A conv, a sigmoid module and a conv (the sigmoid's int8 LOGISTIC is what the test takes out of the emulation)."""

    def __init__(self):
        super().__init__()
        self.conv, self.act, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Sigmoid(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.head(self.act(self.conv(x)))


def test_converter_and_verify_name_the_ops_not_emulated_per_layer(tmp_path, monkeypatch):
    """With the LOGISTIC kernel taken out of the emulation (as an op the converter writes before the emulation knows
    it), the converter's warning and verify() name it per layer and say how far the outputs are."""
    from slimkit.converter import verify
    from slimkit.frameworks.torch import int8_emulation
    from tests.converter.test_int8 import quantize_with

    monkeypatch.setitem(int8_emulation.KERNELS, "sigmoid", (lambda call: None, ("LOGISTIC",)))
    monkeypatch.setattr(int8_emulation, "EMULATED_OPS", int8_emulation.EMULATED_OPS - {"LOGISTIC"})
    model, x, _ = quantize_with(Gate().eval(), (3, 8, 8))
    path = tmp_path / "gate.tflite"
    with pytest.warns(UserWarning, match=r"does not compute these int8 ops of .*gate.tflite exactly: "
                                         r"act \(LOGISTIC\)\. "):
        TFLiteConverter(model, x, path).convert()
    result = verify(model, x, path, draws=4)
    assert result.approximate_ops == ("LOGISTIC",) and result.approximate_layers == ("act (LOGISTIC)",)
    assert {"CONV_2D", "QUANTIZE"} <= set(result.emulated_ops)
    assert result.max_steps is not None and result.max_steps == round(result.max_steps)  # whole steps of the grid
    assert "not bit-exact in general: act (LOGISTIC) run as fake quantization" in result.describe()
    assert f"within {result.max_steps:g} steps of the file" in result.describe()


class Resize(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.options = options
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.head(F.interpolate(self.conv(x), **self.options))


@pytest.mark.parametrize("options", [dict(scale_factor=2, mode="bilinear"), dict(size=(11, 5), mode="bilinear"),
                                     dict(scale_factor=2, mode="bilinear", align_corners=True),
                                     dict(size=(4, 3), mode="bilinear", align_corners=True),
                                     dict(scale_factor=2, mode="nearest")], ids=str)
def test_resize_equals_litert(tmp_path, options):
    """The int8 RESIZE (on the conv's grid, then requantized into the next conv): upsampling, odd sizes, downsampling,
    align_corners."""
    from tests.converter.test_int8 import quantize_with

    torch.manual_seed(0)
    model, x, quantizer = quantize_with(Resize(**options).eval(), (3, 7, 6))
    path = tmp_path / "resize.tflite"
    TFLiteConverter(model, x, path, dynamic_batch=True).convert()
    assert {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"} & set(int8_ops(path))
    tests = torch.randn(16, 3, 7, 6, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad(), quantizer.emulate_integer():
        expected = model(tests).numpy()
    got = np.moveaxis(run_tflite(path, [np.moveaxis(tests.numpy(), 1, -1)])[0], -1, 1)
    np.testing.assert_array_equal(got, expected)


def test_verify_says_exact_when_every_int8_op_is_emulated(tmp_path):
    from slimkit.converter import verify
    from tests.converter.test_int8 import quantize_with

    model, x, _ = quantize_with(Op(torch.sigmoid, 16).eval(), (16,))
    path = tmp_path / "exact.tflite"
    TFLiteConverter(model, x, path).convert()
    result = verify(model, x, path, draws=4)
    assert result.approximate_ops == () and result.approximate_layers == () and result.float_layers == ()
    assert result.max_steps == 0.0 and {"FULLY_CONNECTED", "LOGISTIC"} <= set(result.emulated_ops)
    assert result.describe() == "max |file - model| = 0 (0 output steps) over 5 inputs; every int8 op of the file " \
                                "is emulated exactly."


def test_verify_names_the_float_hard_swish_it_matched(tmp_path):
    """Hard-swish runs in float between DEQUANTIZE and QUANTIZE (XNNPACK has no int8 kernel for it): equal here, yet
    named, since LiteRT's float kernel is not PyTorch's op."""
    from slimkit.converter import verify
    from tests.converter.test_int8 import quantize_with

    model, x, _ = quantize_with(Op(F.hardswish, 16).eval(), (16,))
    path = tmp_path / "hardswish.tflite"
    TFLiteConverter(model, x, path).convert()
    result = verify(model, x, path, draws=4)
    assert result.approximate_ops == () and result.max_steps == 0.0
    assert [layer for layer in result.float_layers if "hardswish" in layer], result.float_layers
    assert "not guaranteed equal" in result.describe()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "distilbert"])
def test_transformer_encoders_are_bit_exact(tmp_path, name):
    """Whole-graph int8 BERT / DistilBERT (float LayerNorm, attention and GELU between int8 kernels, BERT's pooler
    slicing the first token and requantizing it into a TANH): every logit of the file equals the emulation's
    (before SOFTMAX / TANH / slices were emulated: 55 % and 92 % of them)."""
    from tests.hf_zoo import HF_ARCHS, hf_inputs

    model, x = HF_ARCHS[name]()
    quantizer = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=x)
    quantizer.compress()
    quantizer.calibrate(hf_inputs(name, 4, seed=1))
    model.eval()
    path = tmp_path / f"{name}.tflite"
    TFLiteConverter(model, x, path).convert()
    for ids in hf_inputs(name, 12, seed=7):
        with torch.no_grad(), quantizer.emulate_integer():
            expected = model(ids).numpy()
        np.testing.assert_array_equal(run_tflite(path, [ids.numpy()])[0], expected)


class HandNorm(nn.Module):
    """A LayerNorm written out (mean, subtract, square, rsqrt, scale, shift), a tanh-GELU written out, and a matmul of
    two activations: the converter writes int8 MEAN / SUB / MUL / ADD / TANH between float RSQRT and BATCH_MATMUL."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(16, 16), nn.Linear(16, 16)
        self.weight, self.bias = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.randn(16) * 0.1)

    def forward(self, x):
        y = self.fc(x)
        centred = y - y.mean(-1, keepdim=True)
        y = centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + 1e-5) * self.weight + self.bias
        y = 0.5 * y * (1 + torch.tanh(0.79788456 * (y + 0.044715 * y * y * y)))
        return self.out(y), torch.matmul(y.transpose(-1, -2), y)


def test_layer_norm_and_gelu_written_out_are_exact(tmp_path):
    from tests.converter.test_int8 import quantize_with

    torch.manual_seed(0)
    model, x, quantizer = quantize_with(HandNorm().eval(), (4, 16))
    path = tmp_path / "norm.tflite"
    TFLiteConverter(model, x, path, dynamic_batch=True).convert()
    assert {"MEAN", "SUB", "MUL", "ADD", "TANH"} <= set(int8_ops(path))
    tests = torch.randn(64, 4, 16, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad(), quantizer.emulate_integer():
        expected = [t.numpy() for t in model(tests)]
    got = run_tflite(path, [tests.numpy()])
    for e in expected:
        np.testing.assert_array_equal(next(g for g in got if g.shape == e.shape), e)


def test_emulated_ops_are_complete_whatever_the_import_order():
    """``int8_activations`` imported before ``int8_emulation`` (which it imports while registering its kernels):
    EMULATED_OPS still names the activation kernels' ops."""
    import subprocess
    import sys

    from slimkit.frameworks.torch import int8_emulation

    code = ("import slimkit.frameworks.torch.int8_activations\n"
            "from slimkit.frameworks.torch.int8_emulation import EMULATED_OPS\n"
            "print(' '.join(sorted(EMULATED_OPS)))")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "LOGISTIC" in first and first == sorted(int8_emulation.EMULATED_OPS)
