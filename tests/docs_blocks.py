"""Run a Markdown page's Python blocks as written: the helper behind tests/test_docs.py and tests/test_readme.py.

A page's ```` ```python ```` blocks run in order in one namespace (a page is one story), in the current
folder (the tests make it a temporary one). A page may declare setup the reader does not need to see (a
model, data), in an HTML comment that the site does not render. It runs first:

    <!-- docs-test setup
    model, x = ...
    -->

or, on a page of independent fragments, before every block, each block then in a fresh namespace:

    <!-- docs-test setup before each block
    ...
    -->

Errors point at the page's own line numbers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_SETUP = re.compile(r"^<!-- docs-test setup( before each block)?\n(.*?)^-->", re.S | re.M)
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _compiled(text: str, start: int, code: str, path: Path) -> Any:
    return compile("\n" * text.count("\n", 0, start) + code, str(path), "exec")


def python_blocks(text: str) -> list[str]:
    """The code of every ```` ```python ```` block of a page, in order."""
    return _BLOCK.findall(text)


def run_page(path: Path) -> dict[str, Any]:
    """Execute the setup and every Python block of ``path``; returns the namespace the last block ran in."""
    text = path.read_text()
    setups = list(_SETUP.finditer(text))
    each = any(m.group(1) for m in setups)
    setup = [_compiled(text, m.start(2), m.group(2), path) for m in setups]
    namespace: dict[str, Any] = {}
    for index, block in enumerate(_BLOCK.finditer(text)):
        if each or index == 0:
            namespace = {"__name__": "__docs__"}
            for code in setup:
                exec(code, namespace)
        exec(_compiled(text, block.start(1), block.group(1), path), namespace)
    return namespace
