"""Griffe extension for the docs build: make slimkit's docstrings read well as Markdown.

slimkit's docstrings (Keras style) put examples unindented after ``Example:`` so that
``pytest --doctest-modules`` runs them, and name other objects with Sphinx roles (``:class:`Pruner```).
Markdown would read doctest lines as prose (``>>>`` as nested quotes, ``x['a']['b']`` as a reference
link) and print the roles as they are. This extension, on every object including the top package:

- wraps each run of ``>>>`` / ``...`` lines and their output in a ```` ```pycon ```` fence;
- turns ``:role:`target``` into inline code (``~pkg.Name`` shows ``Name``);
- shows a registry that decorators fill at import (a module-level ``NAME = {}``) with what it holds
  once slimkit is imported, instead of the empty literal of its source line.

Docstrings in the source are not changed.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc|obj):`(~?)([^`]+)`")


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


def plain_roles(text: str) -> str:
    """Sphinx roles as inline code.

    Example:

    >>> plain_roles("See :class:`~slimkit.compression.Pruner` and :func:`fence`.")
    'See `Pruner` and `fence`.'
    """
    return _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


def _filled_registry(obj: griffe.Object) -> str | None:
    """``'`a`, `b`'`` for a module-level ``NAME = {}`` that holds entries once its module is imported."""
    if not (obj.is_attribute and obj.parent is not None and obj.parent.is_module and obj.name.isupper()
            and str(getattr(obj, "value", "")) == "{}"):
        return None
    live = getattr(importlib.import_module(obj.parent.path), obj.name, None)
    return ", ".join(f"`{key}`" for key in live) if isinstance(live, dict) and live else None


class DoctestFences(griffe.Extension):
    """Apply :func:`fence_doctests`, :func:`plain_roles` and the registry contents to every object griffe loads."""

    def _render(self, obj: griffe.Object) -> None:
        filled = _filled_registry(obj)
        if filled is not None:
            obj.value = None
            note = f"Filled when slimkit is imported; holds {filled}."
            if obj.docstring is None:
                obj.docstring = griffe.Docstring(note, parent=obj)
            else:
                obj.docstring.value += "\n\n" + note
        if obj.docstring is not None:
            text = obj.docstring.value
            if ">>>" in text:
                text = fence_doctests(text)
            obj.docstring.value = plain_roles(text)

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        self._render(obj)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # the top package is no member: no on_object
        self._render(pkg)
