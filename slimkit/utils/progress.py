"""Progress bars that stay quiet where nobody watches them.

:func:`progress` returns a ``tqdm`` bar that is disabled when stderr is not a terminal (CI logs,
pipes, pytest), when the environment sets ``SLIMKIT_QUIET=1``, or when the caller passes
``quiet=True``. ``quiet=False`` forces the bar on. Library code reports progress through it and
logs through :mod:`logging`; it never prints.

Example:

>>> from slimkit.utils.progress import progress, is_quiet
>>> is_quiet(True)
True
>>> with progress(total=3, desc="demo", quiet=True) as bar:
...     bar.update()
>>> bar.disable
True
>>> sum(progress(range(4), quiet=True))
6
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

QUIET_ENV = "SLIMKIT_QUIET"
"""Environment variable: ``1`` (or ``true``/``yes``) silences every slimkit progress bar."""


def is_quiet(quiet: bool | None = None) -> bool:
    """Whether progress bars are off: ``quiet`` if given, else ``SLIMKIT_QUIET`` or a non-TTY stderr."""
    if quiet is not None:
        return bool(quiet)
    if os.environ.get(QUIET_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    stream = sys.stderr
    return stream is None or not hasattr(stream, "isatty") or not stream.isatty()


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str | None = None,
             quiet: bool | None = None, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar over ``iterable`` (or a manual bar of ``total`` steps), quiet per :func:`is_quiet`.

    Args:
        iterable: what to iterate over; None for a bar advanced with ``bar.update()``.
        total: number of steps (defaults to ``len(iterable)`` where it has one).
        desc: the bar's label.
        quiet: True silences the bar, False forces it on, None decides from the environment.
        **kwargs: passed to ``tqdm`` (``unit``, ``leave``, ...).

    Returns:
        A ``tqdm`` instance; disabled bars cost nothing and print nothing.
    """
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, disable=is_quiet(quiet), file=sys.stderr, **kwargs)
