"""Framework-neutral mask arithmetic on numpy arrays (weights in their native layout).

Sparsity ``s`` on ``n`` items removes the nearest integer to ``s * n`` of them (halves round
up) and always keeps at least one item.

Example:

>>> import numpy as np
>>> from slimkit.compression.sparsity import prune_count, magnitude_mask, channel_keep
>>> prune_count(0.29, 100), prune_count(0.5, 5), prune_count(0.99, 3)
(29, 3, 2)
>>> magnitude_mask(np.array([[0.1, -3.0], [2.0, 0.5]]), 0.5).tolist()
[[0.0, 1.0], [1.0, 0.0]]
>>> channel_keep(np.array([3.0, 1.0, 2.0, 0.5]), 0.5).tolist()
[True, False, True, False]
>>> nm_mask(np.array([[4.0, 1.0, 3.0, 2.0, 0.1, 0.2, 0.3, 0.4]]), 2, 4).tolist()
[[1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]]
>>> row_mask(np.array([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]]), 0.5).tolist()
[[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
"""

from __future__ import annotations

import math

import numpy as np

from slimkit.compression.channels import ChannelAxis, channel_shape


def prune_count(sparsity: float, n: int) -> int:
    """How many of ``n`` items sparsity ``sparsity`` removes (nearest integer, at least one kept)."""
    if n <= 0:
        return 0
    return min(int(math.floor(sparsity * n + 0.5 + 1e-9)), n - 1)


def smallest_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Flat indices of the ``count`` smallest scores (ties broken by position, stable)."""
    flat = np.asarray(scores).reshape(-1)
    return np.argsort(flat, kind="stable")[:count]


def magnitude_mask(weight: np.ndarray, sparsity: float, pruned: np.ndarray | None = None) -> np.ndarray:
    """0/1 mask removing the ``prune_count(sparsity, weight.size)`` smallest ``|weight|``.

    ``pruned`` (a boolean array of ``weight``'s shape) marks weights already pruned: they are
    removed first, so masks only ever grow sparser (as long as the sparsity does not fall).
    """
    scores = np.abs(weight).astype(np.float64)
    if pruned is not None:
        scores[pruned] = -np.inf
    mask = np.ones(weight.size, dtype=np.float32)
    mask[smallest_indices(scores, prune_count(sparsity, weight.size))] = 0.0
    return mask.reshape(weight.shape)


def channel_keep(importance: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean keep-vector over channels: the least important ``prune_count`` channels are dropped.

    Channels scored ``-inf`` (already pruned) go first.
    """
    keep = np.ones(len(importance), dtype=bool)
    keep[smallest_indices(importance, prune_count(sparsity, len(importance)))] = False
    return keep


def channel_mask(keep: np.ndarray, shape: tuple[int, ...], axis: ChannelAxis) -> np.ndarray:
    """Expand a per-channel keep-vector to a 0/1 mask of ``shape`` along ``axis`` (see
    :mod:`slimkit.compression.channels` for axis tuples)."""
    return np.broadcast_to(keep.reshape(channel_shape(shape, axis)), shape).astype(np.float32)



def nm_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """0/1 mask of 2-D ``scores`` (rows, columns) removing the ``n`` smallest of every ``m`` consecutive columns
    of each row (N:M sparsity; ties broken by position). ``columns`` must be a multiple of ``m``."""
    rows, columns = scores.shape
    groups = np.asarray(scores, dtype=np.float64).reshape(rows, columns // m, m)
    mask = np.ones(groups.shape, dtype=np.float32)
    np.put_along_axis(mask, np.argsort(groups, axis=-1, kind="stable")[..., :n], 0.0, axis=-1)
    return mask.reshape(rows, columns)


def row_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """0/1 mask of 2-D ``scores`` removing the ``prune_count(sparsity, columns)`` smallest of each row."""
    rows, columns = scores.shape
    mask = np.ones((rows, columns), dtype=np.float32)
    order = np.argsort(np.asarray(scores, dtype=np.float64), axis=1, kind="stable")[:, :prune_count(sparsity, columns)]
    np.put_along_axis(mask, order, 0.0, axis=1)
    return mask
