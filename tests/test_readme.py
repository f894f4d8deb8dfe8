"""The README's quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    from slimkit.models import DigitsCNN

    fresh = DigitsCNN()
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pth", weights_only=True))
    assert (tmp_path / "mask.pth").exists() and (tmp_path / "pruned.onnx").exists()
    x = namespace["x_test"][:16]
    namespace["model"].eval()
    fresh.eval()
    assert torch.allclose(fresh(x), namespace["model"](x), atol=1e-6)
