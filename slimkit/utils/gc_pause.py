"""Pause Python's cyclic garbage collector around work that builds large object graphs.

Graph capture and conversion build tens of thousands of objects in reference cycles (graph nodes,
fake tensors, tracer state, IR tensors). Collecting while they are being built finds nothing to
free; it only promotes the unfinished graph to the older generations, and that brings on full
collections of the whole interpreter heap (about 0.2 s once torch is imported) every few
conversions. Paused, one young collection after the work frees its garbage.

Example:

>>> import gc
>>> from slimkit.utils.gc_pause import gc_paused
>>> with gc_paused():
...     gc.isenabled()
False
>>> gc.isenabled()
True
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block; re-enable it after only if it was enabled before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
