"""Unsupported ops are listed at once, before anything is written; writes are atomic."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit
from slimkit.converter import TFLiteConverter
from slimkit.converter import convert as convert_module


class TwoUnsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1))

    def forward(self, x):
        x = torch.logcumsumexp(self.conv(x), dim=1)
        return torch.cummax(self.block(x), dim=2)[0]


def test_every_unsupported_op_listed_with_module_path(tmp_path):
    path = tmp_path / "m.tflite"
    with pytest.raises(slimkit.UnsupportedOpError) as info:
        TFLiteConverter(TwoUnsupported(), torch.randn(1, 3, 8, 8), path).convert()
    message = str(info.value)
    assert "aten.logcumsumexp" in message and "aten.cummax" in message
    assert "2 operator(s)" in message
    assert "docs/converter.md" in message
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_unsupported_arguments_listed_together(tmp_path):
    class M(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x, 2, divisor_override=3) + F.max_pool2d(x, 3, 2, 1, dilation=2).mean()

    with pytest.raises(slimkit.UnsupportedOpError) as info:
        TFLiteConverter(M(), torch.randn(1, 3, 8, 8), tmp_path / "m.tflite").convert()
    message = str(info.value)
    assert "divisor_override" in message and "dilated max pooling" in message
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_previous_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")

    def boom(graph):
        raise RuntimeError("disk full")

    monkeypatch.setattr(convert_module, "serialize", boom)
    with pytest.raises(RuntimeError):
        TFLiteConverter(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), path).convert()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_unknown_option_is_config_error(tmp_path):
    with pytest.raises(slimkit.ConfigError, match="nchw_tranpose"):
        TFLiteConverter(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), tmp_path / "m.tflite", nchw_tranpose=False)


def test_registry_lists_supported_ops():
    from slimkit.converter import supported_ops

    table = dict(supported_ops())
    assert table["aten.conv2d.default"] == ("CONV_2D", "DEPTHWISE_CONV_2D", "PAD")
    assert len(table) > 80


def test_second_converter_for_an_op_is_config_error_naming_both():
    from slimkit.converter.registry import CONVERTERS, register

    before = dict(CONVERTERS)

    def my_floor(ctx, node, a):
        return None

    with pytest.raises(slimkit.ConfigError, match=r"'aten.floor.default' is already converted by "
                                                  r"slimkit.converter.ops.elementwise.floor\. Received: duplicate "
                                                  r"target='aten.floor.default' from .*my_floor"):
        register("aten.my_op.default", "aten.floor.default", emits=("FLOOR",))(my_floor)  # all or none
    assert before == CONVERTERS


def test_model_in_training_mode_converts_in_eval_mode_with_a_warning(tmp_path):
    import warnings

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"training mode \(modules \['1', '2'\]\); it is converted in eval mode"):
        TFLiteConverter(model, x, tmp_path / "train.tflite").convert()
    assert all(m.training for m in model.modules())  # left as it was
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TFLiteConverter(model.eval(), x, tmp_path / "eval.tflite").convert()
    assert (tmp_path / "train.tflite").read_bytes() == (tmp_path / "eval.tflite").read_bytes()


class TraceDependent(nn.Module):
    """Tests ``type(x) is torch.Tensor``: False for the fake tensors of a trace, so the graph takes ``res[0]``."""

    def forward(self, x):
        res = torch.mean(x, dim=1)
        return res if type(res) is torch.Tensor else res[0]


def test_forward_that_changes_under_tracing_is_refused(tmp_path):
    path = tmp_path / "m.tflite"
    with pytest.raises(slimkit.UnsupportedModelError) as info:
        TFLiteConverter(TraceDependent(), torch.randn(1, 3, 8, 8), path).convert()
    message = str(info.value)
    assert "TraceDependent" in message and "output 0" in message
    assert "(8, 8) float32" in message and "(1, 8, 8) float32" in message
    assert os.listdir(tmp_path) == []
