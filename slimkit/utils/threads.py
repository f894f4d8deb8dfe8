"""Run torch on one thread for a block of many small ops.

On a loaded machine the intra-op thread pool's hand-offs cost more than such work itself (speedup's analysis
of ResNet-50: 5.6 s on two threads, 0.6 s on one; GPTQ's column loop on a 1536 x 384 layer: 24 s vs 0.8 s).

Example:

>>> import torch
>>> from slimkit.utils.threads import single_thread
>>> before = torch.get_num_threads()
>>> with single_thread():
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Inside the block torch uses one intra-op thread; the previous count is restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
