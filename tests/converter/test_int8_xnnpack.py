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
from tests.converter.conftest import read_model
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
