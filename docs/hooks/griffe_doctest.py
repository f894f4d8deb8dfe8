"""Griffe extension for the docs build: render top-level ``>>>`` doctest runs as ``pycon`` code blocks.

slimkit's docstrings (Keras style) put examples unindented after ``Example:`` so that
``pytest --doctest-modules`` runs them. Markdown would read such lines as prose (and ``x['a']['b']``
as a reference link); this wraps each run of ``>>>`` / ``...`` lines and their output in a fence.
Docstrings in the source are not changed.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    r"""Wrap unindented doctest runs (prompt lines plus output up to a blank line) in ```` ```pycon ```` fences.

    Example:

    >>> fence_doctests("Example:\n\n>>> 1 + 1\n2\n\nmore").splitlines()
    ['Example:', '', '```pycon', '>>> 1 + 1', '2', '```', '', 'more']
    """
    out: list[str] = []
    in_block = in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if not in_fence and not in_block and line.startswith(">>>"):
            out.append("```pycon")
            in_block = True
        elif in_block and not line.strip():
            out.append("```")
            in_block = False
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Apply :func:`fence_doctests` to every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
