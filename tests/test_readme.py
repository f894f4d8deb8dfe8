"""The README's quick start runs as written, on a core install (no extra: every optional module blocked)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from slimkit.utils.optional import EXTRAS


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Quick start\n.*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    for module in [*EXTRAS, "sklearn", "scipy"]:  # what only an extra installs
        monkeypatch.setitem(sys.modules, module, None)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    from slimkit.models import DigitsCNN

    fresh = DigitsCNN()
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pth", weights_only=True))
    assert (tmp_path / "mask.pth").exists()
    x = namespace["x_test"][:16]
    namespace["model"].eval()
    fresh.eval()
    assert torch.allclose(fresh(x), namespace["model"](x), atol=1e-6)
