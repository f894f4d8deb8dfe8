"""The documentation site builds with `mkdocs build --strict` (every page, nav entry and API reference), and
every Python block of every page runs as written (tests/docs_blocks.py; the README's in tests/test_readme.py)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.docs_blocks import python_blocks, run_page

ROOT = Path(__file__).parents[1]
PAGES = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "docs").rglob("*.md")) if python_blocks(p.read_text())]


@pytest.fixture
def _global_state():
    """What a page may change for the rest of the process: registries it adds to, a process group it opens."""
    from slimkit.algorithms.pruning.registry import PRUNERS
    from slimkit.converter.registry import CONVERTERS
    from slimkit.speedup.registry import MODULE_RULES, OP_RULES, ensure_loaded

    ensure_loaded()  # the speedup rules register on first use: snapshot them complete
    registries = [(registry, dict(registry)) for registry in (PRUNERS, CONVERTERS, MODULE_RULES, OP_RULES)]
    yield
    for registry, saved in registries:
        registry.clear()
        registry.update(saved)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_written(page, tmp_path, monkeypatch, _global_state):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    monkeypatch.setenv("SLIMKIT_QUIET", "1")
    torch.manual_seed(0)
    run_page(ROOT / page)


def test_every_python_block_is_found():
    for page in (ROOT / "docs").rglob("*.md"):
        text = page.read_text()
        assert len(python_blocks(text)) == text.count("```python"), page


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="needs the docs extra (mkdocs, mkdocs-material, mkdocstrings)")
def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()
    reference = (tmp_path / "site" / "api" / "analysis" / "index.html").read_text()
    assert "propose_config" in reference  # API pages are generated from the docstrings
    pages = {page.parent.name: page.read_text() for page in (tmp_path / "site" / "api").glob("*/index.html")}
    assert not [name for name, html in pages.items() if re.search(r":(mod|class|func|meth|data):`", html)]
    top = pages["slimkit"]  # the top package's doctest is a code block, not a paragraph of quotes
    assert '<span class="gp">&gt;&gt;&gt; </span>' in top and "<blockquote>" not in top
    assert re.search(r"Filled when slimkit is imported; holds .*level.*l1", pages["pruning"])  # not "= {}"


def test_every_markdown_page_is_in_the_nav():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk == listed
