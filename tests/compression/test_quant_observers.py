"""Range observers: EMA arithmetic, KL and L2 thresholds on histograms."""

import numpy as np
import pytest
import torch

from slimkit.compression.observers import EMAObserver, HistogramObserver, MinMaxObserver, kl_threshold_bin
from slimkit.frameworks.torch.quant_ops import OPS


def test_minmax_and_ema_after_known_batches():
    batches = [torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 1.0]), torch.tensor([0.5, 6.0])]
    minmax, ema = MinMaxObserver(), EMAObserver(decay=0.5)
    for batch in batches:
        minmax.observe(batch, OPS)
        ema.observe(batch, OPS)
    assert [float(v[0]) for v in minmax.range()] == [-3.0, 6.0]
    lo = 0.5 * (0.5 * -1.0 + 0.5 * -3.0) + 0.5 * 0.5
    hi = 0.5 * (0.5 * 2.0 + 0.5 * 1.0) + 0.5 * 6.0
    assert [float(v[0]) for v in ema.range()] == pytest.approx([lo, hi])


def _outlier_data(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, 200_000), rng.uniform(30, 50, 10)]).astype(np.float32)


def test_kl_threshold_below_maximum_on_outliers_while_minmax_keeps_it():
    data = _outlier_data()
    observer = HistogramObserver("kl", max_clip_fraction=1e-4)  # the outliers are 5e-5 of the values
    for chunk in np.array_split(data, 4):  # several batches: the histogram is re-binned as the range grows
        observer.observe(torch.from_numpy(chunk), OPS)
    lo, hi = observer.range()
    assert float(hi[0]) < 0.5 * data.max()
    assert float(hi[0]) > 2.0  # keeps the bulk of the normal distribution
    minmax = MinMaxObserver()
    minmax.observe(torch.from_numpy(data), OPS)
    assert float(minmax.range()[1][0]) == pytest.approx(data.max())


@pytest.mark.parametrize("method, low, high", [("l2", 9.0, 10.6), ("kl", 9.0, 11.5)])
def test_threshold_on_laplace_matches_the_known_optimum(method, low, high):
    # MSE-optimal 8-bit clipping of Laplace(b=1) is about 9.9 b; the sample maximum is about 14.
    data = np.random.default_rng(0).laplace(0, 1, 1_000_000).astype(np.float32)
    observer = HistogramObserver(method)
    observer.observe(torch.from_numpy(data), OPS)
    lo, hi = observer.range()
    assert low < float(hi[0]) < high < np.abs(data).max()
    assert float(lo[0]) == -float(hi[0])


def test_kl_threshold_on_uniform_histogram_keeps_everything():
    assert kl_threshold_bin(np.ones(2048), 128) >= 2000


def test_histogram_of_nonnegative_data_gives_nonnegative_range():
    observer = HistogramObserver("kl")
    observer.observe(torch.rand(10000) * 3, OPS)
    lo, hi = observer.range()
    assert lo[0] >= 0 and 2.0 < hi[0] <= 3.0


def test_kl_clip_guard_bounds_the_clipped_fraction():
    data = _outlier_data()
    bounded = HistogramObserver("kl", max_clip_fraction=1e-6)
    bounded.observe(torch.from_numpy(data), OPS)
    assert float(bounded.range()[1][0]) > 0.95 * np.abs(data).max()
