"""Int8 files XNNPACK runs whole: activations fused into the op that produces them (module or functional, in modules
called several times too), BatchNorm folded on every call of a shared conv or, folding into none, an int8 depthwise
conv, constant factors int8 MULs, shared weights stored once, max pooling padded with PAD; one delegate partition, and
still bit-exact with ``emulate_integer()``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit import models
from slimkit.converter import TFLiteConverter
from slimkit.models.resnet import BasicBlock, ResNet
from slimkit.utils.litert import delegate_partitions
from tests.converter.conftest import op_codes, read_model
from tests.converter.test_int8 import assert_all_int8, assert_bit_exact, quantize_with, settle_bn

SHAPE = (3, 16, 16)


def convert(build, tmp_path, shape=SHAPE, allow_float=()):
    torch.manual_seed(0)
    model, x, quantizer = quantize_with(settle_bn(build(), shape), shape)
    path = tmp_path / "int8.tflite"
    TFLiteConverter(model, x, path).convert()
    assert_bit_exact(model, quantizer, path, [x, torch.randn(1, *shape), torch.randn(1, *shape) * 2])
    return path, assert_all_int8(path, allow_float)


def weight_readers(path) -> dict[int, int]:
    """Tensor index of each CONV_2D / FULLY_CONNECTED weight -> how many ops read it."""
    model, sg = read_model(path)
    counts: dict[int, int] = {}
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if op.InputsLength() == 3 and sg.Tensors(op.Inputs(1)).Buffer() > 0:
            counts[op.Inputs(1)] = counts.get(op.Inputs(1), 0) + 1
    return counts


def test_resnet_runs_as_one_partition(tmp_path):
    """ResNet's ReLU module is called twice per block (after bn1, after the residual add) and its max pooling pads
    with the lowest value: every activation is fused, the pad is a PAD, XNNPACK takes the whole file."""
    path, codes = convert(lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), tmp_path, (3, 16, 16))
    assert not {"RELU", "RELU6", "PADV2"} & set(codes), codes
    assert codes.count("QUANTIZE") == 1 and codes.count("DEQUANTIZE") == 1, codes
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


class Functional(nn.Module):
    """F.relu / clamp / relu_ / hardtanh after a conv+BN, a conv, an add and a linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.c3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu_(torch.clamp(self.c2(y), 0, 6) + y)
        y = torch.clamp(self.c3(y), min=0).mean((2, 3))
        return F.hardtanh(self.fc(y), 0.0, 6.0)


def test_functional_activations_are_fused(tmp_path):
    path, codes = convert(Functional, tmp_path)
    assert codes == ["QUANTIZE", "CONV_2D", "CONV_2D", "ADD", "CONV_2D", "MEAN", "FULLY_CONNECTED", "DEQUANTIZE"]
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


class SharedHead(nn.Module):
    """One conv+BN+ReLU head (and one ReLU module) called on two feature maps, a detector's shared head."""

    def __init__(self):
        super().__init__()
        self.stem, self.down = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, 2, 1)
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.relu = nn.ReLU()

    def forward(self, x):
        a = self.relu(self.stem(x))
        b = self.relu(self.down(a))
        return self.head(a).mean((2, 3)) + self.head(b).mean((2, 3))


def test_shared_head_folds_its_batchnorm_and_stores_its_weight_once(tmp_path):
    path, codes = convert(SharedHead, tmp_path)
    assert not {"RELU", "MUL"} & set(codes), codes  # BN folded into the conv on both calls
    assert sorted(weight_readers(path).values()) == [1, 1, 2]  # stem, down, the head read by both calls
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(3))
        self.c.weight = self.b.weight

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


def test_tied_weights_are_stored_once(tmp_path):
    path, codes = convert(Tied, tmp_path)
    assert codes == ["QUANTIZE", "CONV_2D", "CONV_2D", "CONV_2D", "DEQUANTIZE"]
    assert sorted(weight_readers(path).values()) == [1, 2]
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


class PreActivation(nn.Module):
    """Pre-activation residual block (BN -> ReLU -> conv, He et al. 2016) and a BatchNorm after the residual add:
    BatchNorms that fold into no conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv1(F.relu(self.bn1(x)))
        return self.bn3(x + self.conv2(F.relu(self.bn2(y))))


def test_standalone_batchnorm_is_an_int8_depthwise_conv_with_its_relu_fused(tmp_path):
    """bn1 (after a conv whose output the residual also reads) and bn3 fold into nothing: each is an int8 1x1
    DEPTHWISE_CONV_2D (per-channel weights, int32 bias) with the ReLU fused, no DEQUANTIZE / MUL / ADD / QUANTIZE
    island; bn2 folds into conv1."""
    path, codes = convert(PreActivation, tmp_path)
    assert codes == ["QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "CONV_2D", "ADD", "DEPTHWISE_CONV_2D",
                     "DEQUANTIZE"], codes
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


class SharedPreActivation(nn.Module):
    """One pre-activation residual block (its BN and conv modules) applied twice."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)

    def block(self, x):
        return x + self.conv(F.relu(self.bn(x)))

    def forward(self, x):
        return self.block(self.block(self.stem(x)))


def test_shared_standalone_batchnorm_is_int8_on_every_call(tmp_path):
    """Per call its own input and output grids, the same int8 depthwise weights; exact past the calibrated range
    (inputs of 4x the calibration's spread)."""
    path, codes = convert(SharedPreActivation, tmp_path)
    torch.manual_seed(2)
    model, x, quantizer = quantize_with(settle_bn(SharedPreActivation(), SHAPE), SHAPE)
    wide = tmp_path / "wide.tflite"
    TFLiteConverter(model, x, wide).convert()
    assert_bit_exact(model, quantizer, wide, [torch.randn(1, *SHAPE) * 4 for _ in range(6)])
    assert sorted(weight_readers(path).values()) == [1, 2, 2]  # the stem; the conv's, the BatchNorm's: both calls
    block = ["DEPTHWISE_CONV_2D", "CONV_2D", "ADD"]
    assert codes == ["QUANTIZE", "CONV_2D", *block, *block, "DEQUANTIZE"], codes
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_model_zoo_runs_as_one_partition(tmp_path, name):
    build = {"resnet18": lambda: models.resnet18(num_classes=10), "resnet50": lambda: models.resnet50(num_classes=10),
             "mobilenet_v2": lambda: models.mobilenet_v2(num_classes=10, width_mult=0.35)}[name]
    path, codes = convert(build, tmp_path, (3, 32, 32))
    assert codes.count("QUANTIZE") == 1 and codes.count("DEQUANTIZE") == 1, codes
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


def test_float_max_pooling_after_a_relu_pads_with_zeros(tmp_path):
    """The float file too: max pooling of a ReLU's output pads with a zero PAD (the same maxima), not PADV2."""
    from slimkit.converter import verify
    from tests.converter.conftest import op_codes

    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    x = torch.randn(1, 3, 16, 16)
    path = tmp_path / "float.tflite"
    TFLiteConverter(model, x, path).convert()
    assert "PADV2" not in op_codes(path)
    assert verify(model, x, path).max_rel_error <= 1e-5
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


#: zoo structures (tests/int8zoo) whose int8 file XNNPACK now runs whole, and what split them before: SPLIT_V of
#: ``chunk`` / ``torch.split`` (now SPLIT when even, STRIDED_SLICE pieces when not), int8 HARD_SWISH (now float
#: between DEQUANTIZE and QUANTIZE, as XNNPACK takes it), the BROADCAST_TO of a grouped-query repeat (now a
#: CONCATENATION), the SELECT_V2 of a causal mask (now the ADD of 0 / the lowest float), an unrolled GRU's shrinking
#: STRIDED_SLICEs and PACK (now stride-1 slices and RESHAPEs, CONCATENATIONs)
ZOO_ONE_PARTITION = ["sigmoid_gate", "concat_split", "hardswish_mobile", "gqa_attention", "gru"]


@pytest.mark.parametrize("name", ZOO_ONE_PARTITION)
def test_zoo_structure_runs_as_one_partition(tmp_path, name):
    """The int8 file (whole-graph PTQ, as the zoo's exactness test writes it) and the float file: one partition."""
    from tests.int8zoo.harness import quantize
    from tests.int8zoo.structures import build

    float_model, example = build(name)
    model, _, _ = quantize(name, "ptq")
    for label, net in (("float", float_model), ("int8", model)):
        path = tmp_path / f"{label}.tflite"
        TFLiteConverter(net, example, path).convert()
        assert delegate_partitions(model_path=str(path), num_threads=2) == (1, []), label


def test_channel_shuffle_is_three_plain_transposes_and_no_requantization(tmp_path):
    """ShuffleNet's ``view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)``: the int8 file keeps the shuffle
    on the input's grid (no DEQUANTIZE / QUANTIZE pair at the transposed view) and writes its batched transpose as
    NHWC -> channels first, shuffle, back (module slimkit.converter.transposes), XNNPACK's fast form."""
    from tests.int8zoo.harness import quantize

    model, _, example = quantize("channel_shuffle", "ptq")
    path = tmp_path / "shuffle.tflite"
    TFLiteConverter(model, example, path).convert()
    codes = op_codes(path)
    assert (codes.count("QUANTIZE"), codes.count("DEQUANTIZE"), codes.count("TRANSPOSE")) == (1, 1, 3), codes
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


@pytest.mark.parametrize("pixels, groups, channels, split", [(16, 3, 4, True), (8, 2, 32, True), (2, 16, 16, False)])
def test_batched_transposes_are_split_only_where_xnnpack_runs_them_faster(tmp_path, pixels, groups, channels, split):
    """The float file of a channel shuffle equals PyTorch; its transpose is split where the batch of pixels is large
    against the thinner side (BATCH_OVER_SIDE), kept whole where one transpose ran faster."""
    from slimkit.converter import verify

    def shuffle(x):
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w) * 2

    x = torch.randn(1, groups * channels, pixels, pixels)
    path = tmp_path / "shuffle.tflite"
    TFLiteConverter(shuffle, x, path).convert()
    assert op_codes(path).count("TRANSPOSE") == (3 if split else 1)
    assert verify(shuffle, x, path).max_abs_error == 0.0


def test_transformer_leaves_to_litert_only_ops_xnnpack_has_no_exact_int8_kernel_for(tmp_path):
    """The zoo's transformer block: ``q, k, v = qkv.unbind(0)`` is a SPLIT (XNNPACK took no UNPACK); the two int8
    BATCH_MATMULs of activations, the int8 SOFTMAX and the int8 GELU stay LiteRT's builtin kernels, which the emulation
    reproduces exactly (XNNPACK takes them only in float, computed with its own approximations)."""
    from tests.int8zoo.harness import quantize

    model, _, example = quantize("transformer", "ptq")
    path = tmp_path / "transformer.tflite"
    TFLiteConverter(model, example, path).convert()
    assert "UNPACK" not in op_codes(path)
    assert delegate_partitions(model_path=str(path), num_threads=2) == (4, ["BATCH_MATMUL", "SOFTMAX", "BATCH_MATMUL",
                                                                            "GELU"])


class ConstantScales(nn.Module):
    """Scalar factors in every spelling: ``x * c``, ``x / c``, ``c * x`` and a one-element buffer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 32)
        self.register_buffer("k", torch.tensor(0.37))

    def forward(self, x):
        h = self.fc(x)
        return h * 0.3 + h / 3 - 1.7 * h + h * self.k


def test_a_constant_factor_is_an_int8_mul(tmp_path):
    """Each factor ``c`` is an int8 constant ``sign(c)`` on the grid ``|c|``: int8 MUL, no float island (it was
    DEQUANTIZE, MUL, QUANTIZE); the emulation computes the MUL's requantization."""
    path, codes = convert(ConstantScales, tmp_path, shape=(16,))
    assert codes == ["QUANTIZE", "FULLY_CONNECTED", "MUL", "MUL", "ADD", "MUL", "SUB", "MUL", "ADD",
                     "DEQUANTIZE"], codes
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


class FunctionalWeights(nn.Module):
    """``F.conv2d`` / ``F.linear`` on the module's own parameters, each followed by a functional ReLU, and a ReLU of a
    ReLU's output (``torch.relu(nn.ReLU()(x))``)."""

    def __init__(self):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3), nn.Parameter(torch.randn(8) * 0.1)
        self.conv, self.relu = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.fc_weight, self.fc_bias = nn.Parameter(torch.randn(6, 8) * 0.3), nn.Parameter(torch.randn(6) * 0.1)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.weight, self.bias, padding=1))
        x = torch.relu(self.relu(self.conv(x))).mean((2, 3))
        return F.relu(F.linear(x, self.fc_weight, self.fc_bias))


def test_functional_layers_on_parameters_are_int8_kernels(tmp_path):
    """Their weights are quantized per output channel as a layer's (int8 CONV_2D / FULLY_CONNECTED, int32 bias) and
    the ReLUs end fused: no float CONV_2D / FULLY_CONNECTED, no standalone RELU."""
    path, codes = convert(FunctionalWeights, tmp_path)
    assert codes == ["QUANTIZE", "CONV_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED", "DEQUANTIZE"], codes
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


class Decoder(nn.Module):
    """``nn.ConvTranspose2d`` with PyTorch's padding (cropped by a SLICE) and ``output_padding``, then a ReLU."""

    def __init__(self, kernel, stride, padding, output_padding):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, kernel, stride, padding, output_padding)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.up(torch.relu(self.conv(x)))))


@pytest.mark.parametrize("geometry, crop", [((2, 2, 0, 0), []), ((3, 2, 1, 1), ["SLICE"]), ((4, 2, 1, 0), [])])
def test_transposed_convolution_is_an_int8_kernel(tmp_path, geometry, crop):
    """Per-channel int8 weights, int32 bias, the ReLU fused (before the crop): one XNNPACK partition."""
    path, codes = convert(lambda: Decoder(*geometry), tmp_path, shape=(3, 8, 8))
    assert codes == ["QUANTIZE", "CONV_2D", "TRANSPOSE_CONV", *crop, "CONV_2D", "DEQUANTIZE"], codes
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])


class DeadChannel(nn.Module):
    """A conv whose BatchNorm zeroes one channel (``gamma`` 1e-14, as trained EfficientNet-Lite0's stem does to
    channels it gave up) while that channel's shift stays 0.5: folded, that channel's weights are ~1e-15 and its
    bias 0.5."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU6()
        self.head = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([1.0, 0.8, 1e-14, 1.2]))
            self.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.5, 0.3]))

    def forward(self, x):
        return self.head(self.relu(self.bn(self.conv(x))))


INPUTS_TOO = [{"quant_types": ["input", "weight", "output"], "quant_bits": 8, "op_types": ["default"]}]


def test_dead_channel_with_input_quantization_gives_a_file_xnnpack_prepares(tmp_path):
    """With ``'input'`` in quant_types, the bias of a dead channel used to floor the whole layer's input scale (to
    fit the int32 bias): trained EfficientNet-Lite0's stem input got scale 47.9 for a range of [-4.5, 4.5], and
    XNNPACK refused the file (requantization scale 282 >= 256, 'Node number 94 failed to prepare'). The dead
    channel's weight scale is floored instead: the input grid is the observed one, XNNPACK runs the file in one
    partition and it equals ``emulate_integer()``."""
    torch.manual_seed(0)
    model, x, quantizer = quantize_with(DeadChannel().eval(), SHAPE, INPUTS_TOO)
    params = quantizer.params["conv"]
    observed = quantizer.states["conv"].observers["input"].range()
    assert float(params["input"].scale[0]) == pytest.approx((observed[1] - observed[0]) / 255, rel=1e-6)
    bias = quantizer.backend.effective_bias(quantizer.layer("conv"))
    assert abs(bias[2]) / (params["input"].scale[0] * params["weight"].scale[2]) <= 2 ** 30 * (1 + 1e-6)
    path = tmp_path / "dead.tflite"
    TFLiteConverter(model, x, path).convert()
    assert delegate_partitions(model_path=str(path)) == (1, [])
    assert_bit_exact(model, quantizer, path, [x, torch.randn(1, *SHAPE), torch.randn(1, *SHAPE) * 3])


def test_a_layer_xnnpack_cannot_prepare_is_refused_by_name(tmp_path, monkeypatch):
    """The same model with the whole input scale floored (the old rule): XNNPACK would fail in allocate_tensors, so
    the converter names the layer, its channel and its requantization scale, and writes nothing."""
    import slimkit.compression.quantizer as quantizer_module
    from slimkit.errors import UnsupportedOpError

    monkeypatch.setattr(quantizer_module, "floor_weight_scales", lambda weight, *_: weight)
    torch.manual_seed(0)
    model, x, _ = quantize_with(DeadChannel().eval(), SHAPE, INPUTS_TOO)
    path = tmp_path / "never.tflite"
    with pytest.raises(UnsupportedOpError, match=r"CONV_2D at conv: output channel #\d has requantization scale"):
        TFLiteConverter(model, x, path).convert()
    assert not path.exists()


class PreActivation1d(nn.Module):
    """BatchNorm1d that folds into no conv: on ``(N, C, L)`` after a Conv1d the residual also reads, and on ``(N, C)``
    features; the outputs are the BatchNorms' own (ReLU fused into one)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.fc, self.bn2 = nn.Linear(8, 6), nn.BatchNorm1d(6)

    def forward(self, x):
        y = self.conv(x)
        h = self.fc((y + F.relu(self.bn(y))).mean(-1))
        return torch.cat([self.bn2(h + h), h], 1)


def test_batchnorm1d_is_an_int8_depthwise_conv(tmp_path):
    """Both re-viewed as 4-D between RESHAPEs: int8 DEPTHWISE_CONV_2D, bit-exact, one partition."""
    torch.manual_seed(0)
    model = PreActivation1d()
    for bn in (model.bn, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.weight.data.uniform_(0.5, 2.0)
    model, x, quantizer = quantize_with(model.eval(), (4, 12))
    path = tmp_path / "bn1d.tflite"
    TFLiteConverter(model, x, path).convert()
    assert_bit_exact(model, quantizer, path, [torch.randn(1, 4, 12) * scale for scale in (0.5, 1, 2, 4)])
    codes = [code for code in op_codes(path) if code not in ("RESHAPE", "TRANSPOSE")]
    assert codes == ["QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "ADD",
                     "DEPTHWISE_CONV_2D", "QUANTIZE", "CONCATENATION", "DEQUANTIZE"], codes  # QUANTIZE: int8 -> int8
    assert delegate_partitions(model_path=str(path), num_threads=2) == (1, [])
