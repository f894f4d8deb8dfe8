"""Int8 files XNNPACK runs whole: activations fused into the op that produces them (module or functional, in modules
called several times too), BatchNorm folded on every call of a shared conv, shared weights stored once, max pooling
padded with PAD; one delegate partition, and still bit-exact with ``emulate_integer()``."""

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


#: a BatchNorm that folds into no conv: float between int8 tensors, its ReLU fused into the float ADD
FLOAT_BN = ["DEQUANTIZE", "MUL", "ADD", "QUANTIZE"]


def test_standalone_batchnorm_fuses_its_relu(tmp_path):
    """bn1 (after a conv whose output the residual also reads) and bn3 fold into nothing: they stay float (MUL, ADD),
    with the ReLU fused into the ADD (no int8 RELU, which XNNPACK refuses); bn2 folds into conv1."""
    path, codes = convert(PreActivation, tmp_path, allow_float=("MUL", "ADD"))
    assert codes == ["QUANTIZE", "CONV_2D", *FLOAT_BN, "CONV_2D", "CONV_2D", "ADD", *FLOAT_BN, "DEQUANTIZE"], codes
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


def test_shared_standalone_batchnorm_fuses_its_relu_on_every_call(tmp_path):
    path, codes = convert(SharedPreActivation, tmp_path, allow_float=("MUL", "ADD"))
    block = [*FLOAT_BN, "CONV_2D", "ADD"]
    assert codes == ["QUANTIZE", "CONV_2D", *block, *block, "DEQUANTIZE"], codes
    assert sorted(weight_readers(path).values()) == [1, 2]  # the stem; the conv's weight read by both calls
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
