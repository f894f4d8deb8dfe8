"""FPGMPruner: filter pruning via geometric median (He et al., CVPR 2019)."""

from __future__ import annotations

import numpy as np

from slimkit.algorithms.pruning.filter import FilterPruner
from slimkit.algorithms.pruning.registry import register_pruner
from slimkit.compression import Layer
from slimkit.compression.channels import channel_rows


def _gram_upper(filters: np.ndarray) -> np.ndarray:
    """``filters @ filters.T``; only the upper triangle is guaranteed (BLAS syrk when SciPy is there)."""
    try:
        from scipy.linalg.blas import dsyrk, ssyrk
    except ImportError:  # pragma: no cover - SciPy comes with scikit-learn; plain matmul otherwise
        return filters @ filters.T
    syrk = ssyrk if filters.dtype == np.float32 else dsyrk
    # a C-ordered (channels, features) array is the Fortran-ordered transpose: trans=1 gives A^T A.
    return syrk(1.0, filters.T, trans=1)


def _distances_(squared: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """In place: ``-2 a.b`` -> ``|a - b|`` given the squared norms of the rows and the columns."""
    squared += left[:, None]
    squared += right[None, :]
    np.maximum(squared, 0.0, out=squared)
    return np.sqrt(squared, out=squared)


def distance_sums(filters: np.ndarray, block: int = 256) -> np.ndarray:
    """For each row of ``filters`` (channels x features), the sum of its Euclidean distances to all rows.

    Vectorised through the Gram matrix (``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``), of which only the
    upper triangle is computed (a symmetric rank-k update costs half a matrix product) and then
    turned into distances ``block`` rows at a time, so that the element-wise work stays in cache.

    Example:

    >>> import numpy as np
    >>> distance_sums(np.array([[0.0], [1.0], [2.0], [4.0], [10.0]])).tolist()
    [17.0, 14.0, 13.0, 15.0, 33.0]
    """
    filters = np.ascontiguousarray(filters)
    if filters.dtype not in (np.float32, np.float64):
        filters = filters.astype(np.float64)
    channels = len(filters)
    gram = _gram_upper(filters)
    gram *= -2.0
    norms = np.einsum("ij,ij->i", filters, filters)
    sums = np.zeros(channels, dtype=np.float64)
    for start in range(0, channels, block):
        stop = min(start + block, channels)
        diagonal = np.triu(_distances_(gram[start:stop, start:stop], norms[start:stop], norms[start:stop]), 1)
        sums[start:stop] += diagonal.sum(axis=1) + diagonal.sum(axis=0)
        if stop < channels:
            beyond = _distances_(gram[start:stop, stop:], norms[start:stop], norms[stop:])
            sums[start:stop] += beyond.sum(axis=1)
            sums[stop:] += beyond.sum(axis=0)
    return sums


@register_pruner("fpgm")
class FPGMPruner(FilterPruner):
    """Remove the filters nearest the geometric median of the layer's filters.

    A filter's importance is the sum of its Euclidean distances to the other filters; those with
    the smallest sums are the most replaceable by the rest and are pruned first. Filters already
    pruned (all-zero masked weights) are left out of the distances.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.pruning import FPGMPruner
    >>> conv = torch.nn.Conv2d(1, 5, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = conv.weight.copy_(torch.tensor([0.0, 1.0, 2.0, 4.0, 10.0]).view(5, 1, 1, 1))
    >>> pruner = FPGMPruner(torch.nn.Sequential(conv), [{'sparsity': 0.2, 'op_types': ['Conv2d']}])
    >>> _ = pruner.compress()
    >>> pruner.get_masks()['0']['weight'].flatten().tolist()
    [1.0, 1.0, 0.0, 1.0, 1.0]
    """

    def channel_importance(self, layer: Layer) -> np.ndarray:
        filters = channel_rows(self.weight_of(layer), layer.out_axis)
        alive = ~self.pruned_channels(layer)
        importance = np.zeros(len(filters))
        importance[alive] = distance_sums(filters[alive])
        return importance
