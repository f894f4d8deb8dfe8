"""`slimkit prune` and `slimkit config generate` end to end on the digits model."""

from __future__ import annotations

import textwrap

import pytest
import torch
import yaml

import slimkit
from slimkit.cli import main
from slimkit.models import DigitsCNN

MODEL = "tests.cli.factories:digits_model"
DATA = "tests.cli.factories:digits_data"

CONFIG = """\
algorithm: L1FilterPruner
config_list:
  - sparsity: 0.5
    op_types: [Conv2d]
  - exclude: true
    op_names: [conv1]
  - sparsity: 0.3
    op_names: [fc]
fine_tune: {epochs: 1, lr: 0.001, batch_size: 128}
input_shape: [1, 1, 8, 8]
"""


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def sparsity(mask):
    return float((mask == 0).sum()) / mask.numel()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("prune")
    out = tmp_path / "out"
    status = main(["prune", "--config", write(tmp_path, CONFIG), "--model", MODEL, "--data", DATA,
                   "--out", str(out), "--quiet"])
    assert status == 0
    return tmp_path, out


def test_prune_writes_model_masks_and_report(pruned):
    _, out = pruned
    masks = slimkit.load_masks(out / "mask.pth")
    assert sorted(masks) == ["conv2", "conv3", "fc"]
    assert sparsity(masks["conv2"]["weight"]) == 0.5 and sparsity(masks["conv3"]["weight"]) == 0.5
    assert sparsity(masks["fc"]["weight"]) == 0.3  # 3 of 10 output rows (nearest integer)
    model = DigitsCNN()
    model.load_state_dict(torch.load(out / "model.pth", weights_only=True))  # plain class, no slimkit
    for name in ("conv2", "conv3", "fc"):
        weight = getattr(model, name).weight
        assert torch.equal(weight == 0, masks[name]["weight"] == 0)  # fine-tuned, zeros baked in
    assert not torch.equal(model.conv1.weight, DigitsCNN().conv1.weight)


def test_prune_report_has_layers_sizes_and_latency(pruned):
    _, out = pruned
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Compression report: {MODEL}\n")
    assert "| conv2 | (64, 32, 3, 3) | 0.5000 |" in report
    assert "| fc | (10, 64) | 0.3000 |" in report
    assert "| conv1 |" not in report
    for row in ("| parameters |", "| non-zero parameters |", "| file size |", "| latency, batch 1, 1 thread (median) |",
                "| accuracy |"):
        assert row in report
    before, after = [int(cell.replace(",", "")) for cell in
                     report.split("| non-zero parameters | ")[1].split(" |")[:2]]
    assert after < before


def test_config_generate_round_trip(pruned, capsys):
    tmp_path, out = pruned
    layers = tmp_path / "layers.yaml"
    assert main(["config", "generate", "--config", str(tmp_path / "cfg.yaml"), "--model", MODEL,
                 "--out", str(layers)]) == 0
    assert f"wrote {layers}: 3 layers" in capsys.readouterr().out
    text = layers.read_text()
    assert "  # conv2: Conv2d, weight (64, 32, 3, 3)\n  - op_names: [conv2]\n    sparsity: 0.5\n" in text
    generated = yaml.safe_load(text)
    assert generated["algorithm"] == "L1FilterPruner"
    assert generated["config_list"] == [{"op_names": ["conv2"], "sparsity": 0.5},
                                        {"op_names": ["conv3"], "sparsity": 0.5},
                                        {"op_names": ["fc"], "sparsity": 0.3}]
    # the per-layer file is itself a config: edit one layer and prune again (no fine-tuning here)
    generated.pop("fine_tune")
    generated["config_list"][1]["sparsity"] = 0.25
    edited = write(tmp_path, yaml.safe_dump(generated), "edited.yaml")
    assert main(["prune", "--config", edited, "--model", MODEL, "--out", str(tmp_path / "again"), "--quiet"]) == 0
    masks = slimkit.load_masks(tmp_path / "again" / "mask.pth")
    original = slimkit.load_masks(out / "mask.pth")
    assert sparsity(masks["conv3"]["weight"]) == 0.25
    assert torch.equal(masks["conv2"]["weight"], original["conv2"]["weight"])  # same weights, same channels
    assert torch.equal(masks["fc"]["weight"], original["fc"]["weight"])


def test_prune_without_data_or_fine_tune(tmp_path, capsys):
    config = write(tmp_path, """\
        algorithm: LevelPruner
        config_list:
          - sparsity: 0.75
            op_types: [Linear]
        """)
    assert main(["prune", "--config", config, "--model", MODEL, "--out", str(tmp_path / "o")]) == 0
    output = capsys.readouterr().out
    assert "pruned 1 layers with LevelPruner: 75.0% of their weights removed" in output
    assert sparsity(slimkit.load_masks(tmp_path / "o" / "mask.pth")["fc"]["weight"]) == 0.75
    assert "latency not measured" in (tmp_path / "o" / "report.md").read_text()
