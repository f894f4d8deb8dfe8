"""`quantize`, `speedup` and `convert` wired through stand-in components (the real ones land separately),
the pruner registry, progress bars and the console entry point."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import slimkit
import slimkit.algorithms.quantization as quantization
import slimkit.compression
from slimkit.algorithms import pruning
from slimkit.algorithms.pruning import FilterPruner
from slimkit.cli import _common, main
from slimkit.utils import progress as progress_module

MODEL = "tests.cli.factories:digits_model"


class HalvingSpeedup:
    """Stand-in ModelSpeedup: replaces ``fc`` by a layer with half the inputs."""

    calls: list = []

    def __init__(self, model, dummy_input, masks):
        self.model, self.masks = model, masks
        HalvingSpeedup.calls.append((tuple(dummy_input.shape), sorted(masks)))

    def speedup_model(self):
        self.model.fc = torch.nn.Linear(self.model.fc.in_features, 5)


def test_speedup_command_with_a_component(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "slimkit.speedup", types.SimpleNamespace(ModelSpeedup=HalvingSpeedup))
    masks = tmp_path / "mask.pth"
    torch.save({"fc": {"weight": torch.ones(10, 64), "bias": None}}, masks)
    status = main(["speedup", "--model", MODEL, "--masks", str(masks), "--input-shape", "1,1,8,8",
                   "--out", str(tmp_path / "out")])
    assert status == 0
    assert HalvingSpeedup.calls[-1] == ((1, 1, 8, 8), ["fc"])
    state = torch.load(tmp_path / "out" / "model_speedup.pth", weights_only=True)
    assert state["fc.weight"].shape == (5, 64)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| latency, batch 1, 1 thread (median) |" in report and "| fc | (10, 64) | 0.0000 |" in report
    assert "parameters 56,490 -> 56,165" in capsys.readouterr().out


class FileConverter:
    def __init__(self, model, dummy_input, path):
        self.path = path

    def convert(self):
        with open(self.path, "wb") as handle:
            handle.write(b"TFL3")


def test_convert_command_with_a_component(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "slimkit.converter", types.SimpleNamespace(TFLiteConverter=FileConverter))
    out = tmp_path / "m.tflite"
    assert main(["convert", "--model", MODEL, "--input-shape", "1x1x8x8", "--out", str(out)]) == 0
    assert out.read_bytes() == b"TFL3" and capsys.readouterr().out == f"wrote {out}\n"
    assert main(["convert", "--model", MODEL, "--input-shape", "1,0", "--out", str(out)]) == 2
    assert "Expected an input shape such as 1,1,8,8. Received: --input-shape '1,0'" in capsys.readouterr().err


class QuantizerBase:
    pass


class RecordingQuantizer(QuantizerBase):
    """Stand-in quantizer following API.md's constructor and export_model."""

    def __init__(self, model, config_list, *, optimizer=None, dummy_input=None, bits=8):
        if config_list[0].get("quant_bits") == 99:
            raise slimkit.ConfigError("RecordingQuantizer: config_list[0]['quant_bits'] is invalid. Expected 1..32.")
        self.model, self.bits, self.dummy_input = model, bits, dummy_input

    def compress(self):
        return self.model

    def export_model(self, model_path, calibration_path=None):
        torch.save(self.model.state_dict(), model_path)
        calibration = {"fc": {"weight_bits": self.bits, "output_bits": self.bits}}
        if self.bits == 8:
            calibration["fc"].update(weight_scale=torch.tensor([0.5, 0.25]), output_scale=0.1, output_zero_point=-3)
        torch.save(calibration, calibration_path)
        return calibration


@pytest.fixture
def quantizers(monkeypatch):
    monkeypatch.setattr(slimkit.compression, "Quantizer", QuantizerBase, raising=False)
    monkeypatch.setattr(quantization, "__all__", ["RecordingQuantizer"], raising=False)
    monkeypatch.setattr(quantization, "RecordingQuantizer", RecordingQuantizer, raising=False)


def test_quantize_command_with_a_component(tmp_path, quantizers, capsys):
    config = tmp_path / "q.yaml"
    config.write_text("algorithm: RecordingQuantizer\narguments: {bits: 4}\ninput_shape: [1, 1, 8, 8]\n"
                      "config_list:\n  - quant_types: [weight]\n    quant_bits: 4\n    op_types: [Linear]\n")
    assert main(["quantize", "--config", str(config), "--model", MODEL, "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("quantized 1 layers with RecordingQuantizer\n")
    calibration = torch.load(tmp_path / "out" / "calibration.pth", weights_only=True)
    assert calibration == {"fc": {"weight_bits": 4, "output_bits": 4}}
    assert "| fc | 4 | - | 4 | - | - |" in (tmp_path / "out" / "report.md").read_text()


def test_quantize_report_table_and_tflite(tmp_path, quantizers, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "slimkit.converter", types.SimpleNamespace(TFLiteConverter=FileConverter))
    config = tmp_path / "q.yaml"
    config.write_text("algorithm: RecordingQuantizer\ninput_shape: [1, 1, 8, 8]\n"
                      "config_list: [{quant_types: [weight], quant_bits: 8, op_types: [Linear]}]\n")
    assert main(["quantize", "--config", str(config), "--model", MODEL, "--out", str(tmp_path / "o"), "--tflite"]) == 0
    assert (tmp_path / "o" / "model.tflite").read_bytes() == b"TFL3"
    report = (tmp_path / "o" / "report.md").read_text()
    assert "| layer | weight bits | weight scale | output bits | output scale | output zero point |" in report
    assert "| fc | 8 | 2 values, 0.25..0.5 | 8 | 0.1 | -3 |" in report and "- model.tflite: 4 bytes" in report


def test_quantize_config_error_names_the_line(tmp_path, quantizers, capsys):
    config = tmp_path / "q.yaml"
    config.write_text("algorithm: RecordingQuantizer\nconfig_list:\n  - quant_types: [weight]\n"
                      "    quant_bits: 99\n    op_types: [Linear]\n")
    assert main(["quantize", "--config", str(config), "--model", MODEL, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(
        f"slimkit quantize: error: {config}:4: key 'quant_bits' (at config_list[0].quant_bits): RecordingQuantizer")


class HalfBase(FilterPruner):
    def rank(self, stats):
        """Subclasses rank channels."""
        raise NotImplementedError


class Concrete(HalfBase):
    def rank(self, stats):
        return stats

    def channel_importance(self, layer):
        return np.ones(layer.weight.shape[0])


def test_pruner_registry_follows_all_and_skips_bases(monkeypatch):
    monkeypatch.setattr(pruning, "__all__", [*pruning.__all__, "HalfBase", "Concrete", "helper"])
    monkeypatch.setattr(pruning, "HalfBase", HalfBase, raising=False)
    monkeypatch.setattr(pruning, "Concrete", Concrete, raising=False)
    monkeypatch.setattr(pruning, "helper", len, raising=False)
    registry = _common.pruner_registry()
    assert "Concrete" in registry and "HalfBase" not in registry and "FilterPruner" not in registry
    assert {"LevelPruner", "L1FilterPruner", "L2FilterPruner"} <= set(registry) and "helper" not in registry


def test_progress_is_quiet_off_a_terminal(monkeypatch):
    class Terminal:
        def isatty(self):
            return True

        def write(self, text):
            return len(text)

        def flush(self):
            pass

    monkeypatch.delenv("SLIMKIT_QUIET", raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_module.is_quiet() is False and progress_module.progress(range(2)).disable is False
    monkeypatch.setenv("SLIMKIT_QUIET", "1")
    assert progress_module.is_quiet() is True and progress_module.is_quiet(False) is False
    monkeypatch.delenv("SLIMKIT_QUIET")
    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(write=lambda text: None))  # a pipe without isatty
    assert progress_module.is_quiet() is True


def test_console_entry_point():
    result = subprocess.run([sys.executable, "-m", "slimkit.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    for command in ("prune", "config", "sensitivity", "quantize", "speedup", "convert", "inspect"):
        assert f"    {command}" in result.stdout
    assert 'slimkit = "slimkit.cli:main"' in (Path(__file__).parents[2] / "pyproject.toml").read_text()
