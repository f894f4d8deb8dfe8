"""The command-line pipeline prune -> speedup -> quantize -> convert end to end, the pruner registry,
progress bars and the console entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import slimkit
import slimkit.compression
from slimkit.algorithms import pruning
from slimkit.algorithms.pruning import FilterPruner
from slimkit.cli import _common, main
from slimkit.utils import progress as progress_module

MODEL = "tests.cli.factories:digits_model"
DATA = "tests.cli.factories:digits_data"


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


PRUNE_YAML = """\
    algorithm: L1FilterPruner
    arguments: {dependency_aware: true}
    input_shape: [1, 1, 8, 8]
    config_list:
      - sparsity: 0.5
        op_types: [Conv2d]
    """

QUANTIZE_YAML = """\
    algorithm: PostTrainingQuantizer
    arguments: {algorithm: minmax}
    input_shape: [1, 1, 8, 8]
    calibration: {batches: 4}
    config_list:
      - quant_types: [weight, input, output]
        op_types: [Conv2d, Linear]
    """


def test_prune_speedup_quantize_convert_from_yaml(tmp_path, capsys):
    """The whole command-line pipeline on the digits CNN, with every file it writes checked."""
    from slimkit.converter.verify import run_tflite
    from slimkit.speedup import ModelSpeedup
    from tests.cli.factories import digits_model

    prune_dir, speed_dir, quant_dir = tmp_path / "prune", tmp_path / "speedup", tmp_path / "quant"
    assert main(["prune", "--config", write(tmp_path / "prune.yaml", PRUNE_YAML), "--model", MODEL,
                 "--out", str(prune_dir)]) == 0
    masks = slimkit.load_masks(prune_dir / "mask.pth")
    for name, channels in (("conv1", 32), ("conv2", 64), ("conv3", 64)):
        kept = masks[name]["weight"].flatten(1).amax(dim=1)
        assert int((kept == 0).sum()) == channels // 2, name

    assert main(["speedup", "--model", MODEL, "--weights", str(prune_dir / "model.pth"), "--masks",
                 str(prune_dir / "mask.pth"), "--input-shape", "1,1,8,8", "--out", str(speed_dir)]) == 0
    x = torch.randn(2, 1, 8, 8)
    masked = digits_model()
    masked.load_state_dict(torch.load(prune_dir / "model.pth", weights_only=True))
    small = digits_model()
    small.load_state_dict(torch.load(prune_dir / "model.pth", weights_only=True))
    ModelSpeedup(small, x[:1], masks).speedup_model()
    small.load_state_dict(torch.load(speed_dir / "model_speedup.pth", weights_only=True))
    masked.eval(), small.eval()
    assert torch.allclose(small(x), masked(x), rtol=1e-5, atol=1e-6)
    assert small.conv3.out_channels < 64 and small.fc.in_features == small.conv3.out_channels

    assert main(["quantize", "--config", write(tmp_path / "q.yaml", QUANTIZE_YAML), "--model", MODEL, "--weights",
                 str(prune_dir / "model.pth"), "--masks", str(prune_dir / "mask.pth"), "--data", DATA, "--tflite",
                 "--out", str(quant_dir)]) == 0
    calibration = torch.load(quant_dir / "calibration.pth", weights_only=True)
    assert sorted(calibration) == ["conv1", "conv2", "conv3", "fc"]
    assert len(calibration["conv3"]["weight_scale"]) == small.conv3.out_channels
    codes = tflite_op_codes(quant_dir / "model.tflite")
    assert codes.count("CONV_2D") == 3 and "FULLY_CONNECTED" in codes

    converted = tmp_path / "float.tflite"
    assert main(["convert", "--model", MODEL, "--weights", str(prune_dir / "model.pth"), "--masks",
                 str(prune_dir / "mask.pth"), "--input-shape", "1,1,8,8", "--out", str(converted)]) == 0
    got = run_tflite(converted, [x[:1].permute(0, 2, 3, 1).numpy()])[0]
    assert np.allclose(got, small(x[:1]).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert "| latency, batch 1, 1 thread (median) |" in (speed_dir / "report.md").read_text()


def tflite_op_codes(path: Path) -> list[str]:
    import tflite

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {value: name for name, value in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
    graph = model.Subgraphs(0)
    return [names[max(model.OperatorCodes(graph.Operators(i).OpcodeIndex()).BuiltinCode(),
                      model.OperatorCodes(graph.Operators(i).OpcodeIndex()).DeprecatedBuiltinCode())]
            for i in range(graph.OperatorsLength())]


def test_quantize_config_error_names_the_line(tmp_path, capsys):
    config = write(tmp_path / "q.yaml", """\
        algorithm: PostTrainingQuantizer
        config_list:
          - quant_types: [weight]
            quant_bits: 99
            op_types: [Linear]
        """)
    assert main(["quantize", "--config", config, "--model", MODEL, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(
        f"slimkit quantize: error: {config}:4: key 'quant_bits' (at config_list[0].quant_bits): PostTrainingQuantizer")


def test_convert_rejects_a_bad_input_shape(tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert main(["convert", "--model", MODEL, "--input-shape", "1,0", "--out", str(out)]) == 2
    assert "Expected an input shape such as 1,1,8,8. Received: --input-shape '1,0'" in capsys.readouterr().err
    assert not out.exists()


def test_pruner_registry_is_the_registered_pruners(monkeypatch):
    """A pruner registered with ``register_pruner`` is reachable from YAML by its class name; bases are not."""
    monkeypatch.setattr(pruning.registry, "PRUNERS", dict(pruning.PRUNERS))
    monkeypatch.setattr(pruning, "PRUNERS", pruning.registry.PRUNERS)

    @pruning.register_pruner("ones")
    class OnesPruner(FilterPruner):
        def channel_importance(self, layer):
            return np.ones(layer.weight.shape[0])

    registry = _common.pruner_registry()
    assert registry["OnesPruner"] is OnesPruner and "FilterPruner" not in registry
    assert {"LevelPruner", "L1FilterPruner", "L2FilterPruner", "AGPPruner", "SlimPruner"} <= set(registry)


def test_prune_with_a_users_pruner_class_by_import_path(tmp_path):
    config = write(tmp_path / "prune.yaml", """\
        algorithm: tests.cli.factories:LastChannelsPruner
        config_list:
          - sparsity: 0.25
            op_types: [Conv2d]
        """)
    assert main(["prune", "--config", config, "--model", MODEL, "--out", str(tmp_path / "out")]) == 0
    masks = slimkit.load_masks(tmp_path / "out" / "mask.pth")
    for name, channels in (("conv1", 32), ("conv2", 64), ("conv3", 64)):
        kept = masks[name]["weight"].flatten(1).amax(dim=1)
        assert kept.tolist() == [1.0] * (channels * 3 // 4) + [0.0] * (channels // 4), name


def test_algorithm_by_import_path_must_be_a_compressor_class(tmp_path, capsys):
    config = write(tmp_path / "prune.yaml", """\
        algorithm: tests.cli.factories:digits_model
        config_list:
          - sparsity: 0.5
            op_types: [Conv2d]
        """)
    assert main(["prune", "--config", config, "--model", MODEL, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{config}:1: " in err
    assert "Expected a Pruner subclass. Received: algorithm='tests.cli.factories:digits_model'" in err


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


def test_speedup_writes_both_files_or_neither(tmp_path, monkeypatch):
    """`slimkit speedup --onnx`: a failing ONNX export leaves no model_speedup.pth behind either."""
    from slimkit.frameworks.torch import onnx_export

    prune_dir, speed_dir = tmp_path / "prune", tmp_path / "speedup"
    assert main(["prune", "--config", write(tmp_path / "prune.yaml", PRUNE_YAML), "--model", MODEL,
                 "--out", str(prune_dir)]) == 0

    def broken(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(onnx_export, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        main(["speedup", "--model", MODEL, "--weights", str(prune_dir / "model.pth"), "--masks",
              str(prune_dir / "mask.pth"), "--input-shape", "1,1,8,8", "--onnx", "--out", str(speed_dir)])
    assert sorted(p.name for p in speed_dir.iterdir()) == []
