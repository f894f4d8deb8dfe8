"""Structural checks on the written flatbuffer (parsed with the ``tflite`` package)."""

from __future__ import annotations

import tflite
import torch
from torch import nn

from slimkit.models import mobilenet_v2, resnet18
from tests.converter.conftest import conv_options, op_codes, read_model

SAME, VALID, RELU, RELU6 = 0, 1, 1, 3


def test_resnet_has_no_transpose_and_one_conv_per_conv_bn_relu(check):
    model = resnet18(num_classes=10)
    path, _ = check(model, torch.randn(1, 3, 32, 32))
    codes = op_codes(path)
    assert "TRANSPOSE" not in codes
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert codes.count("CONV_2D") == convs
    for banned in ("MUL", "RELU", "BATCH_NORM", "SUB"):
        assert banned not in codes
    # conv1 / every first conv of a block: conv + bn + relu fused into one op
    assert sum(act == RELU for _, _, act in conv_options(path)) >= 9
    # relu after the residual add is fused into the ADD
    assert codes.count("ADD") == 8


def test_mobilenet_relu6_fused_and_no_transpose(check):
    path, _ = check(mobilenet_v2(num_classes=10), torch.randn(1, 3, 32, 32))
    codes = op_codes(path)
    assert "TRANSPOSE" not in codes and "RELU6" not in codes
    assert any(act == RELU6 for code, _, act in conv_options(path) if code == "DEPTHWISE_CONV_2D")


def test_same_padding_detected(check):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=2, dilation=1),
                          nn.Conv2d(4, 4, 3))
    path, _ = check(model, torch.randn(1, 3, 9, 9))
    assert op_codes(path) == ["CONV_2D"] * 3
    assert [p for _, p, _ in conv_options(path)] == [SAME, SAME, VALID]


def test_pad_kept_where_pytorch_differs(check):
    # stride 2, pad 1 on an even size: TFLite SAME would pad (0, 1), PyTorch pads (1, 1)
    path, _ = check(nn.Conv2d(3, 4, 3, 2, 1), torch.randn(1, 3, 8, 8))
    assert op_codes(path) == ["PAD", "CONV_2D"]
    # on an odd size they agree
    path, _ = check(nn.Conv2d(3, 4, 3, 2, 1), torch.randn(1, 3, 9, 9))
    assert op_codes(path) == ["CONV_2D"]


def test_io_layout_follows_nchw_transpose(check):
    model = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 6, 7)
    path, _ = check(model, x)
    _, sg = read_model(path)
    assert sg.Tensors(sg.Inputs(0)).ShapeAsNumpy().tolist() == [1, 6, 7, 3]
    assert sg.Tensors(sg.Outputs(0)).ShapeAsNumpy().tolist() == [1, 6, 7, 4]
    path, _ = check(model, x, nchw_transpose=False)
    _, sg = read_model(path)
    assert sg.Tensors(sg.Inputs(0)).ShapeAsNumpy().tolist() == [1, 3, 6, 7]
    assert sg.Tensors(sg.Outputs(0)).ShapeAsNumpy().tolist() == [1, 4, 6, 7]
    assert op_codes(path) == ["TRANSPOSE", "CONV_2D", "TRANSPOSE"]


def test_permutes_cancel(check):
    class M(nn.Module):
        def forward(self, x):
            return (x.permute(0, 2, 3, 1) * 2).permute(0, 3, 1, 2) + 1

    path, _ = check(M(), torch.randn(1, 3, 4, 5))
    assert op_codes(path) == ["MUL", "ADD"]


def test_operator_versions_and_opcodes(check):
    path, _ = check(nn.Linear(4, 3), torch.randn(2, 5, 4))
    model, _ = read_model(path)
    code = model.OperatorCodes(0)
    assert code.BuiltinCode() == tflite.BuiltinOperator.FULLY_CONNECTED
    assert code.Version() == 5  # keep_num_dims
    assert model.Version() == 3


def test_constant_buffers_aligned(check):
    path, _ = check(resnet18(num_classes=10), torch.randn(1, 3, 32, 32))
    model, _ = read_model(path)
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            assert buffer._tab.Vector(4) % 16 == 0


def test_optimize_zero_keeps_batch_norm_and_activations(check):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    path, _ = check(model, torch.randn(1, 3, 6, 6), optimize=0)
    assert op_codes(path) == ["PAD", "CONV_2D", "MUL", "ADD", "RELU"]


def test_flatten_into_linear_needs_no_transpose(check):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    path, _ = check(model, torch.randn(1, 3, 6, 6))
    assert op_codes(path) == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]


def test_unet_and_densenet_have_no_transpose(check):
    from tests.converter.models import converter_test_models

    models = converter_test_models()
    for name in ("unet", "densenet_like"):
        model, x = models[name]
        path, _ = check(model, x)
        assert "TRANSPOSE" not in op_codes(path), name


def test_grouped_conv_is_version_6(check):
    path, _ = check(nn.Conv2d(4, 6, 3, groups=2), torch.randn(1, 4, 6, 6))
    model, _ = read_model(path)
    assert (model.OperatorCodes(0).BuiltinCode(), model.OperatorCodes(0).Version()) == (
        tflite.BuiltinOperator.CONV_2D, 6)


def test_per_channel_affine_after_conv_is_folded(check):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x) / torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1) + 0.5
            return torch.relu(self.bn(y * torch.tensor([2.0, 1.0, 0.5, 1.0]).view(4, 1, 1) - 1))

    path, _ = check(M(), torch.randn(1, 3, 6, 6))
    assert op_codes(path) == ["CONV_2D"]


def test_to_bytes_equals_written_file(tmp_path):
    from slimkit.converter import TFLiteConverter

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    conv = TFLiteConverter(model, torch.randn(1, 3, 6, 6), tmp_path / "m.tflite")
    conv.convert()
    assert conv.to_bytes() == (tmp_path / "m.tflite").read_bytes()


def test_channel_shuffle_and_token_flatten_keep_channels_last(check):
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 1, groups=2), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            x = self.a(x)
            n, c, h, w = x.shape
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            return self.b(x)

    path, _ = check(Shuffle(), torch.randn(1, 8, 4, 4))
    assert op_codes(path).count("TRANSPOSE") == 3  # the shuffle, in XNNPACK's fast form (converter.transposes); no more

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 2, 2), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(2).transpose(1, 2))

    path, _ = check(Tokens(), torch.randn(1, 3, 8, 8))
    assert "TRANSPOSE" not in op_codes(path)
