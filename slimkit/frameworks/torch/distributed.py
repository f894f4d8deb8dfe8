"""Building blocks for compressing under ``torch.distributed`` (DistributedDataParallel).

Every helper is a no-op without an initialised process group, so the same script runs on one
process or many. The recipe: build the model and compress it on every rank **before** wrapping
it in ``DistributedDataParallel``; call :func:`sync_masks` after each mask update so every rank
holds rank 0's masks; write files on the main process only (:func:`export_model`).

Example (single process: every helper is a no-op):

>>> import numpy as np, torch
>>> from slimkit.frameworks.torch import distributed
>>> distributed.is_main_process(), distributed.world_size()
(True, 1)
>>> distributed.all_reduce_sum(torch.tensor([1.0, 2.0])).tolist()
[1.0, 2.0]
>>> distributed.all_reduce_sum(np.array([3, 4])).tolist()
[3, 4]
>>> distributed.all_reduce_min(2.0), distributed.all_reduce_max(np.array([1.5])).tolist()
(2.0, [1.5])
>>> masks = {'fc': {'weight': torch.ones(2, 2), 'bias': None}}
>>> distributed.broadcast_masks(masks) is masks
True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from slimkit.errors import SlimkitError

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True when ``torch.distributed`` has an initialised default process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, and always without a process group: the process that writes files and logs."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        torch.distributed.barrier()


def _device_for_backend() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def _all_reduce(value: Any, op: str) -> Any:
    if not is_distributed():
        return value
    name = f"all_reduce_{op}"
    if isinstance(value, torch.Tensor):
        device = _device_for_backend()
        work = value.detach().to(device) if value.device != device else value.detach()
        torch.distributed.all_reduce(work, op=getattr(torch.distributed.ReduceOp, _OPS[op]))
        if work is not value:
            with torch.no_grad():
                value.copy_(work.to(value.device))
        return value
    if isinstance(value, np.ndarray):
        reduced = _all_reduce(torch.from_numpy(np.array(value, copy=True)), op)
        return reduced.numpy().astype(value.dtype, copy=False)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        reduced = _all_reduce(torch.tensor([value], dtype=torch.float64), op)
        return type(value)(reduced.item())
    raise SlimkitError(f"{name}: Expected a torch tensor, a numpy array or a number. "
                       f"Received: {type(value).__name__}")


def all_reduce_sum(value: Any) -> Any:
    """Sum ``value`` over every rank: a tensor (in place, returned), a numpy array or a Python number.

    Activation statistics (APoZ, mean activation, BN ranges, histogram counts) gathered on each rank's
    shard of the data must be summed with this (and divided by the summed count) before masks or
    quantization parameters are computed.
    """
    return _all_reduce(value, "sum")


def all_reduce_min(value: Any) -> Any:
    """Element-wise minimum of ``value`` over every rank (tensor in place, numpy array or number)."""
    return _all_reduce(value, "min")


def all_reduce_max(value: Any) -> Any:
    """Element-wise maximum of ``value`` over every rank (tensor in place, numpy array or number)."""
    return _all_reduce(value, "max")


def all_reduce_range(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(all_reduce_min(lo), all_reduce_max(hi))`` of numpy arrays in one collective (a MAX over
    ``[-lo, hi]``; negation is exact, so the result is the same). Used by the quantization observers."""
    if not is_distributed():
        return lo, hi
    lo, hi = np.asarray(lo, dtype=np.float64).reshape(-1), np.asarray(hi, dtype=np.float64).reshape(-1)
    both = _all_reduce(torch.from_numpy(np.concatenate([-lo, hi])), "max").numpy()
    return -both[: lo.size], both[lo.size:]


def _broadcast(value: Any, src: int) -> Any:
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.array(value, copy=True))
        _broadcast(tensor, src)
        np.copyto(value, tensor.numpy())
        return value
    device = _device_for_backend()
    work = value.detach().to(device) if value.device != device else value.detach()
    torch.distributed.broadcast(work, src=src)
    if work is not value:
        with torch.no_grad():
            value.copy_(work.to(value.device))
    return value


def broadcast_masks(masks: Mapping[str, Mapping[str, Any]], src: int = 0) -> Mapping[str, Mapping[str, Any]]:
    """Make every rank's ``masks`` equal to rank ``src``'s (in place; the same dict is returned).

    ``masks`` is ``{layer: {'weight': mask, 'bias': mask or None}}`` as ``get_masks()`` returns,
    with torch tensors or numpy arrays.

    Raises:
        SlimkitError: the ranks hold masks for different layers.
    """
    if not is_distributed():
        return masks
    layout = sorted((name, entry.get("bias") is not None) for name, entry in masks.items())
    layouts: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(layouts, layout)
    if any(other != layouts[src] for other in layouts):
        raise SlimkitError(f"broadcast_masks: the ranks compress different layers. Expected the same model and "
                           f"config_list on every rank. Received: rank {rank()} has {[n for n, _ in layout]}, "
                           f"rank {src} has {[n for n, _ in layouts[src]]}")
    for name in sorted(masks):
        for kind in ("weight", "bias"):
            if masks[name].get(kind) is not None:
                _broadcast(masks[name][kind], src)
    return masks


def sync_masks(pruner: Any, src: int = 0) -> None:
    """Install rank ``src``'s masks on every rank's ``pruner`` (after ``compress()`` or a mask update)."""
    if not is_distributed():
        return
    masks = broadcast_masks(pruner.get_masks(), src)
    for name, entry in masks.items():
        pruner.set_mask(pruner.layer(name), {"weight": entry["weight"], "bias": entry.get("bias")})


def export_model(pruner: Any, **kwargs: Any) -> bool:
    """``pruner.export_model(**kwargs)`` on the main process only, then a barrier. True where it wrote."""
    wrote = False
    if is_main_process():
        pruner.export_model(**kwargs)
        wrote = True
    barrier()
    return wrote


__all__ = ["all_reduce_max", "all_reduce_min", "all_reduce_range", "all_reduce_sum", "barrier", "broadcast_masks",
           "export_model", "is_distributed", "is_main_process", "rank", "sync_masks", "world_size"]
