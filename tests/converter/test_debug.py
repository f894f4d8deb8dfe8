"""export_converter_files writes what a bug report needs."""

from __future__ import annotations

import json

import torch
from torch import nn

from slimkit.converter import export_converter_files


def test_bundle_for_a_supported_model(tmp_path):
    files = export_converter_files(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(1, 3, 8, 8), tmp_path,
                                   "net")
    assert set(files) == {"exported", "state_dict", "inputs", "ops", "tflite"}
    ops = json.loads((tmp_path / "net.ops.json").read_text())
    assert [o["op"] for o in ops] == ["aten.conv2d.default", "aten.relu.default"]
    assert ops[0]["module"] == "0" and all(o["supported"] for o in ops)
    assert "conv2d" in (tmp_path / "net.exported.txt").read_text()
    assert set(torch.load(files["state_dict"], weights_only=True)) == {"0.weight", "0.bias"}


def test_bundle_for_an_unsupported_model(tmp_path):
    class M(nn.Module):
        def forward(self, x):
            return torch.logcumsumexp(x, 1)

    files = export_converter_files(M(), torch.randn(1, 3), tmp_path)
    assert "tflite" not in files and "error" in files
    assert "aten.logcumsumexp" in (tmp_path / "model.error.txt").read_text()
    assert not (tmp_path / "model.tflite").exists()
