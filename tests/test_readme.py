"""The README's Python (its Quick start) runs as written, on a core install (every optional module blocked)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from slimkit.utils.optional import EXTRAS
from tests.docs_blocks import python_blocks, run_page

README = Path(__file__).parents[1] / "README.md"


def test_readme_quick_start_runs_on_a_core_install(tmp_path, monkeypatch):
    assert len(python_blocks(README.read_text())) == 1  # the Quick start; the docs pages run in tests/test_docs.py
    monkeypatch.chdir(tmp_path)
    for module in [*EXTRAS, "sklearn", "scipy"]:  # what only an extra installs
        monkeypatch.setitem(sys.modules, module, None)
    torch.manual_seed(0)
    namespace = run_page(README)
    from slimkit.models import DigitsCNN

    fresh = DigitsCNN()
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pth", weights_only=True))
    assert (tmp_path / "mask.pth").exists()
    x = namespace["x_test"][:16]
    namespace["model"].eval()
    fresh.eval()
    assert torch.allclose(fresh(x), namespace["model"](x), atol=1e-6)
