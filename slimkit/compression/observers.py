"""Range observers: min-max, moving average (EMA) and histogram with L2 / KL threshold search.

Observers see tensors through the framework's :class:`~slimkit.compression.quant.QuantOps`
(``min_max``, ``histogram``) and keep their state in numpy, so they serve every framework.
``observe(x, ops)`` records a batch; ``range()`` returns ``(lo, hi)`` numpy arrays.

Under ``torch.distributed`` every ``observe`` reduces its batch statistics over the ranks (batch minimum
with MIN, maximum with MAX, histogram counts with SUM; no-ops without a process group), so each rank
holds the statistics of the global batch and computes the same parameters. Every rank must observe the
same tensors in the same order (the same model and config on every rank, as under DDP).

Example:

>>> import numpy as np
>>> from slimkit.compression.observers import EMAObserver, HistogramObserver
>>> ema = EMAObserver(decay=0.9)
>>> ema.update(np.array([-1.0]), np.array([2.0])); ema.update(np.array([-3.0]), np.array([4.0]))
>>> [round(float(v[0]), 6) for v in ema.range()]
[-1.2, 2.2]
>>> rng = np.random.default_rng(0)
>>> data = np.concatenate([rng.normal(0, 1, 100000), [60.0]])
>>> hist = HistogramObserver('kl')
>>> hist.update_numpy(data)
>>> lo, hi = hist.range()
>>> 2.0 < float(hi[0]) < 30.0
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.compression.finite import check_finite
from slimkit.utils import distributed


class Observer:
    """Base: tracks ``lo``/``hi`` (1-D numpy arrays)."""

    def __init__(self) -> None:
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def observe(self, x: Any, ops: Any, axis: int | None = None, where: str = "an observed tensor") -> None:
        """Record a batch. Under ``torch.distributed`` the batch range is first reduced over the ranks
        (minimum of the minima, maximum of the maxima), so every rank records the range of the global batch.

        Raises:
            NonFiniteError: the batch holds NaN or infinity (named by ``where``); nothing is recorded.
        """
        self.update(*self._batch_range(x, ops, axis, where))

    @staticmethod
    def _batch_range(x: Any, ops: Any, axis: int | None, where: str) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = ops.min_max(x, axis)
        lo, hi = distributed.all_reduce_range(np.atleast_1d(lo), np.atleast_1d(hi))
        check_finite(lo, hi, where=where)
        return np.atleast_1d(lo), np.atleast_1d(hi)

    def update(self, lo: np.ndarray, hi: np.ndarray) -> None:
        raise NotImplementedError

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.lo is None:
            return np.zeros(1), np.zeros(1)
        return self.lo, self.hi

    @property
    def ready(self) -> bool:
        return self.lo is not None

    def set_range(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self.lo, self.hi = np.atleast_1d(np.asarray(lo, dtype=np.float64)), np.atleast_1d(
            np.asarray(hi, dtype=np.float64))

    def state_dict(self) -> dict[str, Any]:
        """The recorded statistics (numpy arrays and numbers; see :mod:`slimkit.compression.state`)."""
        return {"lo": self.lo, "hi": self.hi}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` exactly (the next :meth:`observe` continues from it)."""
        self.lo, self.hi = state["lo"], state["hi"]


class MinMaxObserver(Observer):
    """The running minimum and maximum over every batch seen."""

    def update(self, lo: np.ndarray, hi: np.ndarray) -> None:
        if self.lo is None:
            self.set_range(lo, hi)
        else:
            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)


class EMAObserver(Observer):
    """Exponential moving averages of the batch minimum and maximum (Jacob et al., 2018):
    ``range = decay * range + (1 - decay) * batch_range``; the first batch sets the range."""

    def __init__(self, decay: float = 0.99):
        super().__init__()
        self.decay = decay

    def update(self, lo: np.ndarray, hi: np.ndarray) -> None:
        if self.lo is None:
            self.set_range(lo, hi)
        else:
            self.lo = self.decay * self.lo + (1 - self.decay) * lo
            self.hi = self.decay * self.hi + (1 - self.decay) * hi


class HistogramObserver(MinMaxObserver):
    """A histogram of the non-zero ``|x|`` (2048 bins over ``[0, max|x|]``, re-binned when the range grows),
    and a clipping threshold searched on it. Exact zeros (the ReLU's dead half) are left out: 0 is
    always exact, and a spike at 0 would pull the threshold down.

    Args:
        method: ``'kl'`` (TensorRT / TinyNN entropy calibration: the threshold whose clipped and
            quantized distribution has the least KL divergence from the original) or ``'l2'`` (the
            threshold with the least expected squared quantization error).
        bits: bit width the threshold is chosen for.
        bins: histogram resolution.
    """

    def __init__(self, method: str = "kl", bits: int = 8, bins: int = 2048, max_clip_fraction: float | None = None):
        super().__init__()
        self.method, self.bits, self.bins = method, bits, bins
        self.max_clip_fraction = max_clip_fraction
        self.counts = np.zeros(bins, dtype=np.float64)
        self.top = 0.0

    def observe(self, x: Any, ops: Any, axis: int | None = None, where: str = "an observed tensor") -> None:
        """Record a batch; under ``torch.distributed`` the range is reduced over the ranks first (so the
        bins grow identically everywhere) and the batch's counts are summed over the ranks."""
        self.update(*self._batch_range(x, ops, None, where))
        self._grow(float(max(-self.lo[0], self.hi[0])))
        if self.top > 0:
            self.counts += distributed.all_reduce_sum(ops.histogram(x, self.bins, self.top, skip_zeros=True))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "counts": self.counts, "top": self.top}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.counts, self.top = np.asarray(state["counts"], dtype=np.float64), float(state["top"])

    def update_numpy(self, x: np.ndarray) -> None:
        """Observe a numpy batch (reference path, used in tests)."""
        x = np.asarray(x, dtype=np.float64)
        self.update(np.atleast_1d(x.min()), np.atleast_1d(x.max()))
        self._grow(float(np.abs(x).max()))
        if self.top > 0:
            self.counts += np.histogram(np.abs(x[x != 0]), bins=self.bins, range=(0.0, self.top))[0]

    def _grow(self, amax: float) -> None:
        if amax <= self.top:
            return
        new_top = amax if self.top == 0 else max(amax, self.top * 1.5)
        if self.counts.any():  # move each old bin's count to the new bin holding its centre
            centres = (np.arange(self.bins) + 0.5) * (self.top / self.bins)
            index = np.minimum((centres / new_top * self.bins).astype(np.int64), self.bins - 1)
            moved = np.zeros(self.bins)
            np.add.at(moved, index, self.counts)
            self.counts = moved
        self.top = new_top

    def threshold(self) -> float:
        """The clipping threshold on ``|x|`` chosen by ``method``."""
        if self.top == 0 or not self.counts.any():
            return 0.0
        unsigned = self.lo is not None and self.lo[0] >= 0
        levels = 2 ** self.bits if unsigned else 2 ** (self.bits - 1)
        index = (kl_threshold_bin(self.counts, levels) if self.method == "kl"
                 else l2_threshold_bin(self.counts, 2 ** self.bits, unsigned))
        if self.max_clip_fraction is not None:  # never clip more than this fraction of the values
            tail = np.cumsum(self.counts[::-1])[::-1] / self.counts.sum()
            guard = int(np.argmax(tail <= self.max_clip_fraction)) - 1 if (tail <= self.max_clip_fraction).any() \
                else self.bins - 1
            index = max(index, guard)
        return min((index + 1) * self.top / self.bins, self.top)

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.lo is None:
            return np.zeros(1), np.zeros(1)
        threshold = self.threshold()
        return np.maximum(self.lo, -threshold), np.minimum(self.hi, threshold)


def _kl_divergence(counts: np.ndarray, tail: np.ndarray, i: int, levels: int) -> float:
    p = counts[:i].copy()
    p[-1] += tail[i]
    nonzero = counts[:i] != 0
    # merge the i bins into `levels` groups; spread each group's mass over its non-empty bins
    edges = (np.arange(levels + 1) * i) // levels
    group = np.repeat(np.arange(levels), np.diff(edges))
    group_mass = np.bincount(group, weights=counts[:i], minlength=levels)
    group_nonzero = np.bincount(group, weights=nonzero, minlength=levels)
    q = np.where(nonzero, group_mass[group] / np.maximum(group_nonzero[group], 1), 0.0)
    p_sum, q_sum = p.sum(), q.sum()
    if p_sum == 0 or q_sum == 0:
        return np.inf
    mask = p > 0
    p_n, q_n = p[mask] / p_sum, q[mask] / q_sum
    if np.any(q_n == 0):
        return np.inf
    return float(np.sum(p_n * np.log(p_n / q_n)))


def kl_threshold_bin(counts: np.ndarray, levels: int = 128) -> int:
    """TensorRT's entropy calibration on a histogram of ``|x|``: the bin index ``i`` (threshold at
    the end of bin ``i``) minimising ``KL(P || Q)``, where ``P`` is the histogram cut at ``i`` with the
    clipped mass added to its last bin and ``Q`` is ``P`` merged into ``levels`` levels and expanded.
    Searched coarse to fine (64 candidates, then every bin around the best)."""
    bins = len(counts)
    counts = counts.astype(np.float64)
    if bins <= levels:
        return bins - 1
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    coarse = np.unique(np.linspace(levels, bins, 64).astype(np.int64))
    scores = {int(i): _kl_divergence(counts, tail, int(i), levels) for i in coarse}
    best = min(scores, key=lambda i: (scores[i], i))
    step = int(coarse[1] - coarse[0]) if len(coarse) > 1 else 1
    for i in range(max(levels, best - step + 1), min(bins, best + step - 1) + 1, max(1, step // 8)):
        if i not in scores:
            scores[i] = _kl_divergence(counts, tail, i, levels)
    best = min(scores, key=lambda i: (scores[i], i))
    return best - 1


def _l2_errors(counts: np.ndarray, candidates: np.ndarray, levels: int, unsigned: bool) -> np.ndarray:
    centres = np.arange(len(counts), dtype=np.float32) + 0.5
    t = candidates[:, None].astype(np.float32)
    step = (t if unsigned else 2 * t) / (levels - 1)
    clipped = np.minimum(centres[None, :], t)
    quantized = np.round(clipped / step) * step if unsigned else np.round((clipped + t) / step) * step - t
    return ((centres[None, :] - quantized) ** 2) @ counts.astype(np.float32)


def l2_threshold_bin(counts: np.ndarray, levels: int = 256, unsigned: bool = False) -> int:
    """The bin index whose end, used as the clipping threshold, minimises the expected squared
    error of uniform quantization with ``levels`` levels over ``[-t, t]`` (``[0, t]`` if unsigned),
    the data being the bin centres weighted by their counts (in units of one bin). Searched coarse
    (64 thresholds) to fine (every bin around the best)."""
    bins = len(counts)
    coarse = np.unique(np.linspace(max(bins // 64, 1), bins, 64).astype(np.int64))
    best = int(coarse[int(np.argmin(_l2_errors(counts, coarse, levels, unsigned)))])
    step = int(coarse[1] - coarse[0]) if len(coarse) > 1 else 1
    fine = np.arange(max(1, best - step), min(bins, best + step) + 1, max(1, step // 16))
    return int(fine[int(np.argmin(_l2_errors(counts, fine, levels, unsigned)))]) - 1


OBSERVERS = {"minmax": MinMaxObserver, "ema": EMAObserver, "kl": HistogramObserver, "l2": HistogramObserver}
