"""What the channel analysis knows about one tensor of the graph, and the union-find over channels.

Every tensor carries two small arrays, both broadcastable to the tensor's shape ("compact": a
dimension along which nothing varies has size 1):

- ``ids`` (int64): the *channel variable* of each element. Elements with the same variable must
  be kept or removed together; :class:`UnionFind` merges variables that are coupled (residual
  adds, module inputs shared by several calls, ...). ``KEEP`` (0) is a variable that is always
  kept (model inputs, outputs of ops that mix channels); ``FREE`` (-1) carries no constraint
  (constants, parameters that are scalars).
- ``const`` (float64): the value of each element when it does not depend on the input (a pruned
  channel is 0, or a constant after a BatchNorm shift), NaN where it does.

Example:

>>> import torch
>>> from slimkit.speedup.state import compact, UnionFind
>>> compact(torch.tensor([[1, 1], [2, 2]])).tolist()
[[1], [2]]
>>> uf = UnionFind()
>>> a, b = uf.new(2).tolist()
>>> uf.union_arrays(torch.tensor([a]), torch.tensor([b])); uf.find(a) == uf.find(b)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

KEEP = 0
FREE = -1


@dataclass
class TensorState:
    """Channel variables and constant values of one tensor (see the module docstring)."""

    ids: torch.Tensor
    const: torch.Tensor
    shape: tuple[int, ...]

    def full_ids(self) -> torch.Tensor:
        return self.ids.expand(self.shape).contiguous()

    def full_const(self) -> torch.Tensor:
        return self.const.expand(self.shape).contiguous()


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """Shrink every dimension along which ``tensor`` is constant to size 1."""
    for dim in range(tensor.dim()):
        if tensor.shape[dim] > 1:
            first = tensor.narrow(dim, 0, 1)
            same = (tensor == first) | (torch.isnan(tensor) & torch.isnan(first)) if tensor.is_floating_point() \
                else tensor == first
            if bool(same.all()):
                tensor = first
    return tensor


def keep_state(shape: tuple[int, ...], var: int = KEEP) -> TensorState:
    """A tensor whose every element is the variable ``var`` and depends on the input."""
    ones = (1,) * len(shape)
    return TensorState(torch.full(ones, var, dtype=torch.long), torch.full(ones, float("nan"), dtype=torch.float64),
                       tuple(shape))


def constant_state(value: torch.Tensor) -> TensorState:
    """A parameter or constant: FREE when a scalar, else KEEP (its elements are tied to positions)."""
    value = value.detach()
    ones = (1,) * value.dim()
    var = FREE if value.numel() == 1 else KEEP
    const = compact(value.to(torch.float64)) if value.is_floating_point() else torch.full(ones, float("nan"),
                                                                                        dtype=torch.float64)
    return TensorState(torch.full(ones, var, dtype=torch.long), const, tuple(value.shape))


def channel_vector(ids: torch.Tensor, dim: int, size: int) -> torch.Tensor | None:
    """Per-index variables along ``dim`` (length ``size``), or None when they also vary along other dims."""
    dim = dim % ids.dim() if ids.dim() else 0
    if ids.dim() == 0:
        return ids.reshape(1).expand(size)
    others = [d for d in range(ids.dim()) if d != dim and ids.shape[d] > 1]
    if others:
        return None
    vector = ids.reshape(-1)
    return vector.expand(size) if vector.numel() == 1 else vector


class UnionFind:
    """Union-find over channel variables (non-negative integers) with a "kept" mark, vectorised in numpy.

    Variable 0 (:data:`KEEP`) starts kept. Coupling (:meth:`union_arrays`) and keeping (:meth:`keep`)
    are separate, so the coupled groups stay visible even when every channel is kept; a set is
    kept when any of its variables is marked.
    """

    def __init__(self) -> None:
        self.parent = np.arange(1024, dtype=np.int64)
        self.marked = np.zeros(1024, dtype=bool)
        self.marked[KEEP] = True
        self.count = 1

    def new(self, n: int) -> torch.Tensor:
        """``n`` fresh variables."""
        start = self.count
        self.count += n
        if self.count > len(self.parent):
            size = max(self.count, 2 * len(self.parent))
            parent = np.arange(size, dtype=np.int64)
            parent[: len(self.parent)] = self.parent
            marked = np.zeros(size, dtype=bool)
            marked[: len(self.marked)] = self.marked
            self.parent, self.marked = parent, marked
        return torch.arange(start, self.count, dtype=torch.long)

    def find_all(self, variables: np.ndarray) -> np.ndarray:
        parent = self.parent
        roots = parent[variables]
        while True:
            up = parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        parent[variables] = roots  # path compression
        return roots

    def find(self, var: int) -> int:
        return int(self.find_all(np.array([var]))[0])

    def union(self, a: int, b: int) -> None:
        self.union_arrays(torch.tensor([a]), torch.tensor([b]))

    def union_arrays(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Union ``a`` and ``b`` element-wise (broadcast); FREE entries are skipped."""
        a, b = torch.broadcast_tensors(a, b)
        a, b = a.reshape(-1).numpy(), b.reshape(-1).numpy()
        ok = (a >= 0) & (b >= 0) & (a != b)
        a, b = a[ok], b[ok]
        while len(a):
            ra, rb = self.find_all(a), self.find_all(b)
            differ = ra != rb
            if not differ.any():
                return
            a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
            np.minimum.at(self.parent, np.maximum(ra, rb), np.minimum(ra, rb))

    def keep(self, ids: torch.Tensor) -> None:
        """Force every variable in ``ids`` (and everything coupled with it) to be kept."""
        flat = ids.reshape(-1).numpy()
        self.marked[flat[flat >= 0]] = True

    def roots(self, ids: torch.Tensor) -> np.ndarray:
        """The set representative of each variable (FREE stays FREE)."""
        flat = ids.reshape(-1).numpy()
        out = flat.copy()
        valid = flat >= 0
        out[valid] = self.find_all(flat[valid])
        return out.reshape(tuple(ids.shape))

    def kept_all(self) -> np.ndarray:
        """Boolean per variable: its set holds a marked variable."""
        roots = self.find_all(np.arange(self.count))
        root_kept = np.zeros(self.count, dtype=bool)
        root_kept[roots[self.marked[: self.count]]] = True
        return root_kept[roots]

    def kept(self, ids: torch.Tensor, snapshot: np.ndarray | None = None) -> np.ndarray:
        """Boolean: which variables of ``ids`` end up kept (FREE counts as not kept)."""
        table = self.kept_all() if snapshot is None else snapshot
        flat = ids.reshape(-1).numpy()
        out = np.where(flat >= 0, table[np.maximum(flat, 0)], False)
        return out.reshape(tuple(ids.shape))
