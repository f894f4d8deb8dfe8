"""Framework-neutral process-group queries for the core (``slimkit.compression``), which imports no framework.

Each function answers for the single-process case without importing anything; when PyTorch is
already loaded it delegates to :mod:`slimkit.frameworks.torch.distributed` (a PyTorch process group
can only exist if ``torch`` was imported). Keras multi-worker training is not covered.

Example:

>>> from slimkit.utils import distributed
>>> distributed.is_main_process(), distributed.all_reduce_sum(3)
(True, 3)
"""

from __future__ import annotations

import sys
from typing import Any


def _torch_helpers() -> Any:
    if "torch" not in sys.modules:
        return None
    from slimkit.frameworks.torch import distributed

    return distributed if distributed.is_distributed() else None


def is_main_process() -> bool:
    """True on rank 0 of a PyTorch process group, and always without one."""
    helpers = _torch_helpers()
    return helpers.is_main_process() if helpers else True


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    helpers = _torch_helpers()
    if helpers:
        helpers.barrier()


def is_distributed() -> bool:
    """True under an initialised PyTorch process group."""
    return _torch_helpers() is not None


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    helpers = _torch_helpers()
    return helpers.world_size() if helpers else 1


def all_reduce_min(value: Any) -> Any:
    """Element-wise minimum over ranks (returned unchanged without a process group)."""
    helpers = _torch_helpers()
    return helpers.all_reduce_min(value) if helpers else value


def all_reduce_max(value: Any) -> Any:
    """Element-wise maximum over ranks (returned unchanged without a process group)."""
    helpers = _torch_helpers()
    return helpers.all_reduce_max(value) if helpers else value


def all_reduce_range(lo: Any, hi: Any) -> tuple[Any, Any]:
    """``(min over ranks of lo, max over ranks of hi)`` for numpy arrays, in one collective."""
    helpers = _torch_helpers()
    return helpers.all_reduce_range(lo, hi) if helpers else (lo, hi)


def all_reduce_sum(value: Any) -> Any:
    """Sum a tensor / numpy array / number over ranks (returned unchanged without a process group)."""
    helpers = _torch_helpers()
    return helpers.all_reduce_sum(value) if helpers else value


def sync_masks(pruner: Any) -> None:
    """Give every rank rank 0's masks (no-op without a process group)."""
    helpers = _torch_helpers()
    if helpers:
        helpers.sync_masks(pruner)
