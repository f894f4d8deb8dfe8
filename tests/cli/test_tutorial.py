"""The CLI tutorial's worked example runs as written, and every ``--help`` example names what ships."""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path

import torch

import slimkit
from slimkit.cli import COMMANDS, build_parser, main
from slimkit.cli._common import load_object
from slimkit.models import DigitsCNN

TUTORIAL = Path(__file__).parents[2] / "docs" / "tutorials" / "cli.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TUTORIAL.read_text(), re.S)


def test_every_help_example_names_a_function_that_ships(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    texts = [parser.epilog] + [importlib.import_module(module).EXAMPLE for module in COMMANDS.values()]
    specs = {spec for text in texts for spec in re.findall(r"\b(\w+(?:\.\w+)+:\w+)", text)}
    specs -= {"mypkg.factories:build", "package.module:name", "package.module:Class"}  # placeholders, explained
    assert specs == {"slimkit.models:DigitsCNN", "slimkit.models:load_digits_tensors", "slimkit.models:digits_accuracy"}
    for spec in specs:
        assert callable(load_object(spec))


def test_worked_example_runs_from_the_current_folder(tmp_path, monkeypatch):
    """``mypkg/factories.py`` and ``prune.yaml`` as the page shows them, then its ``slimkit prune`` line, from the
    folder holding ``mypkg/`` (which the console script does not put on ``sys.path`` by itself)."""
    factories = next(block for block in _blocks("python") if block.startswith("# mypkg/factories.py"))
    config = next(block for block in _blocks("yaml") if block.startswith("# prune.yaml"))
    command = next(block for block in _blocks("bash") if block.startswith("slimkit prune"))
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "factories.py").write_text(factories)
    (tmp_path / "prune.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setenv("SLIMKIT_QUIET", "1")
    try:
        argv = shlex.split(command.replace("\\\n", " "))
        assert argv[0] == "slimkit" and main(argv[1:]) == 0
    finally:
        for name in ("mypkg", "mypkg.factories"):
            sys.modules.pop(name, None)
    model = DigitsCNN()
    model.load_state_dict(torch.load(tmp_path / "out" / "model.pth", weights_only=True))
    masks = slimkit.load_masks(tmp_path / "out" / "mask.pth")
    assert sorted(masks) == ["conv2", "conv3"]
    assert [int((masks[n]["weight"].flatten(1).sum(1) == 0).sum()) for n in ("conv2", "conv3")] == [32, 32]
    assert torch.equal(model.conv2.weight, model.conv2.weight * masks["conv2"]["weight"])
    assert "accuracy" in (tmp_path / "out" / "report.md").read_text()
