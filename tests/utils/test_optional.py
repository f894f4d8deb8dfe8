"""A missing optional dependency names the slimkit extra that installs it, before anything is written.

Each case blocks the module (``sys.modules[name] = None``, what Python does for a module that failed to
import) and calls the feature as a user would.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.algorithms.quantization import NaiveQuantizer
from slimkit.errors import MissingDependencyError, SlimkitError
from slimkit.utils.optional import EXTRAS

ROOT = Path(__file__).parents[2]


def _block(monkeypatch, *modules: str) -> None:
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def _expect_extra(extra: str, module: str):
    return pytest.raises(MissingDependencyError, match=rf"needs '{module}'.*pip install 'slimkit\[{extra}\]'")


def test_every_extra_named_is_an_extra_of_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # docs / dev / all hold tools, bench the benchmark peers (NNCF): slimkit itself never imports them
    assert set(EXTRAS.values()) == set(extras) - {"docs", "dev", "all", "bench"}
    for module, extra in EXTRAS.items():
        requirements = " ".join(extras[extra]).replace("-", "_")
        assert module in requirements or (module == "keras" and extra == "tensorflow"), (module, extra)
    assert issubclass(MissingDependencyError, SlimkitError) and issubclass(MissingDependencyError, ImportError)


def test_verify_and_run_tflite_name_the_litert_extra(monkeypatch, tmp_path):
    from slimkit.converter import TFLiteConverter, verify
    from slimkit.converter.verify import run_tflite

    model, x = torch.nn.Linear(4, 3), torch.randn(1, 4)
    path = tmp_path / "m.tflite"
    TFLiteConverter(model, x, str(path)).convert()
    _block(monkeypatch, "ai_edge_litert")
    with _expect_extra("litert", "ai_edge_litert"):
        verify(model, x, str(path))
    with _expect_extra("litert", "ai_edge_litert"):
        run_tflite(path, [x.numpy()])


@pytest.mark.parametrize("missing", ["tensorflow", "keras"])
def test_keras_support_names_the_tensorflow_extra(monkeypatch, missing):
    import types

    _block(monkeypatch, missing)
    if missing == "keras":  # TensorFlow present (a stand-in: importing the real one is slow), Keras missing
        monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    monkeypatch.delitem(sys.modules, "slimkit.frameworks.tensorflow", raising=False)
    with _expect_extra("tensorflow", missing):
        importlib.import_module("slimkit.frameworks.tensorflow")


@pytest.mark.parametrize("compressor", ["pruner", "quantizer"])
def test_onnx_export_names_the_onnx_extra_and_writes_nothing(monkeypatch, tmp_path, compressor):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    if compressor == "pruner":
        pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    else:
        pruner = NaiveQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Linear"]}])
    pruner.compress()
    _block(monkeypatch, "onnxscript")
    with _expect_extra("onnx", "onnxscript"):
        pruner.export_model(tmp_path / "m.pth", tmp_path / "side.pth", onnx_path=tmp_path / "m.onnx",
                            input_shape=[1, 4])
    assert list(tmp_path.iterdir()) == []


def test_inspect_onnx_names_the_onnx_extra(monkeypatch, tmp_path):
    from slimkit.analysis.inspect import describe_onnx

    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    _block(monkeypatch, "onnx")
    with _expect_extra("onnx", "onnx"):
        describe_onnx(str(tmp_path / "m.onnx"))


def test_plot_names_the_plot_extra_and_writes_nothing(monkeypatch, tmp_path):
    from slimkit.analysis.sensitivity import SensitivityTable

    table = SensitivityTable(1.0, higher_is_better=True)
    _block(monkeypatch, "matplotlib")
    with _expect_extra("plot", "matplotlib"):
        table.plot(tmp_path / "s.png")
    assert list(tmp_path.iterdir()) == []


def test_cli_sensitivity_names_the_plot_extra_before_the_sweep(monkeypatch, tmp_path, capsys):
    from slimkit.cli import main

    _block(monkeypatch, "matplotlib")
    config = tmp_path / "sens.yaml"
    config.write_text("algorithm: L1FilterPruner\nevaluate: slimkit.models:digits_accuracy\nsparsities: [0.5]\n")
    status = main(["sensitivity", "--config", str(config), "--model", "slimkit.models:DigitsCNN",
                   "--out", str(tmp_path / "out")])
    assert status == 2
    assert "pip install 'slimkit[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_speedup_onnx_names_the_onnx_extra_and_writes_nothing(monkeypatch, tmp_path, capsys):
    from slimkit.cli import main

    _block(monkeypatch, "onnxscript")
    status = main(["speedup", "--model", "slimkit.models:DigitsCNN", "--masks", str(tmp_path / "mask.pth"),
                   "--input-shape", "1,1,8,8", "--onnx", "--out", str(tmp_path / "out")])
    assert status == 2
    assert "slimkit speedup --onnx needs 'onnxscript'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
