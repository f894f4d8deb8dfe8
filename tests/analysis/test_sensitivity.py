"""Sensitivity analysis: exact ordering and proposed config on a model with a fragile and a robust layer."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from slimkit import ConfigError
from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner
from slimkit.analysis.sensitivity import SensitivityTable, sensitivity
from slimkit.cli import main
from tests.analysis.sensitivity_models import TwoLayers, unchanged_outputs

MODEL = "tests.analysis.sensitivity_models:two_layers"

SWEEP = [0.25, 0.5, 0.75]


@pytest.fixture(scope="module")
def table():
    return sensitivity(TwoLayers(), unchanged_outputs, LevelPruner, SWEEP, quiet=True)


def test_table_values_and_ordering(table):
    assert table.baseline == 1.0
    assert table.results == {"robust": {0.25: 1.0, 0.5: 1.0, 0.75: 1.0},
                             "fragile": {0.25: 0.75, 0.5: 0.5, 0.75: 0.25}}
    assert table.ranking() == ["fragile", "robust"]
    assert table["fragile"][0.5] == 0.5 and table.drop("fragile", 0.75) == 0.75


def test_proposed_config_meets_the_budget(table):
    assert table.propose_config(max_drop=0.0) == [{"sparsity": 0.75, "op_names": ["robust"]}]
    assert table.propose_config(max_drop=0.3) == [{"sparsity": 0.75, "op_names": ["robust"]},
                                                  {"sparsity": 0.25, "op_names": ["fragile"]}]
    proposed = TwoLayers()
    pruner = LevelPruner(proposed, table.propose_config(max_drop=0.0))
    assert unchanged_outputs(pruner.compress()) == 1.0  # the proposal is a valid config_list


def test_markdown_and_plot(table, tmp_path):
    assert table.to_markdown() == (
        "baseline: 1.0000\n\n| layer | 0.25 | 0.5 | 0.75 |\n|---|---:|---:|---:|\n"
        "| robust | 1.0000 | 1.0000 | 1.0000 |\n| fragile | 0.7500 | 0.5000 | 0.2500 |\n")
    table.plot(tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]  # no temporary file left


def test_original_model_untouched_and_filter_pruner():
    model = TwoLayers()
    before = copy.deepcopy(model.state_dict())
    result = sensitivity(model, unchanged_outputs, L1FilterPruner, [0.5], op_names=["fragile"], quiet=True)
    assert result.results == {"fragile": {0.5: 0.5}}  # two of four output rows removed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.robust) is torch.nn.Linear  # never wrapped


def test_loss_metric_and_errors():
    table = SensitivityTable(baseline=0.1, results={"a": {0.5: 0.2}, "b": {0.5: 0.1}}, higher_is_better=False)
    assert table.ranking() == ["a", "b"] and table.propose_config(0.05) == [{"sparsity": 0.5, "op_names": ["b"]}]
    with pytest.raises(ConfigError, match=r"Expected sparsities in \[0, 1\)"):
        sensitivity(TwoLayers(), unchanged_outputs, LevelPruner, [1.0])
    with pytest.raises(ConfigError, match="no layer of the model matches"):
        sensitivity(TwoLayers(), unchanged_outputs, LevelPruner, [0.5], op_types=("Conv2d",))


def test_sensitivity_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLIMKIT_QUIET", "1")
    config = tmp_path / "sens.yaml"
    config.write_text("algorithm: LevelPruner\nevaluate: tests.analysis.sensitivity_models:unchanged_outputs\n"
                      "sparsities: [0.25, 0.5, 0.75]\nop_types: [Linear]\nmax_drop: 0.0\n")
    out = tmp_path / "out"
    assert main(["sensitivity", "--config", str(config), "--model", MODEL,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "most sensitive first: fragile, robust" in printed
    assert (out / "sensitivity.png").exists() and "| fragile | 0.7500 |" in (out / "sensitivity.md").read_text()
    proposed = yaml.safe_load((out / "proposed.yaml").read_text())
    assert proposed == {"algorithm": "LevelPruner", "arguments": {},
                        "config_list": [{"sparsity": 0.75, "op_names": ["robust"]}]}
    # the proposal runs as is through `slimkit prune`
    assert main(["prune", "--config", str(out / "proposed.yaml"), "--model", MODEL,
                 "--out", str(tmp_path / "pruned")]) == 0


def test_sensitivity_command_yaml_error(tmp_path, capsys):
    config = tmp_path / "sens.yaml"
    config.write_text("algorithm: LevelPruner\nevaluate: tests.analysis.sensitivity_models:unchanged_outputs\n"
                      "sparsities: [0.25, 1.5]\n")
    assert main(["sensitivity", "--config", str(config), "--model", MODEL,
                 "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"slimkit sensitivity: error: {config}:3: key 'sparsities': Expected a non-empty list of numbers in [0, 1). "
        "Received: sparsities=[0.25, 1.5]\n")
