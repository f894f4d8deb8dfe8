"""FPGMPruner: filter pruning via geometric median (He et al., CVPR 2019)."""

from __future__ import annotations

import numpy as np

from slimkit.algorithms.pruning.filter import FilterPruner
from slimkit.algorithms.pruning.registry import register_pruner
from slimkit.compression import Layer
from slimkit.compression.sparsity import per_channel


def _gram_upper(filters: np.ndarray) -> np.ndarray:
    """``filters @ filters.T``; only the upper triangle is guaranteed (BLAS syrk when SciPy is there)."""
    try:
        from scipy.linalg.blas import dsyrk, ssyrk
    except ImportError:  # pragma: no cover - SciPy comes with scikit-learn; plain matmul otherwise
        return filters @ filters.T
    syrk = ssyrk if filters.dtype == np.float32 else dsyrk
    # a C-ordered (channels, features) array is the Fortran-ordered transpose: trans=1 gives A^T A.
    return syrk(1.0, filters.T, trans=1)


def distance_sums(filters: np.ndarray) -> np.ndarray:
    """For each row of ``filters`` (channels x features), the sum of its Euclidean distances to all rows.

    Vectorised through the Gram matrix (``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``), of which only the
    upper triangle is computed: a symmetric rank-k update costs half a matrix product.

    Example:

    >>> import numpy as np
    >>> distance_sums(np.array([[0.0], [1.0], [2.0], [4.0], [10.0]])).tolist()
    [17.0, 14.0, 13.0, 15.0, 33.0]
    """
    filters = np.ascontiguousarray(filters)
    if filters.dtype not in (np.float32, np.float64):
        filters = filters.astype(np.float64)
    gram = _gram_upper(filters)
    norms = np.einsum("ij,ij->i", filters, filters)
    squared = norms[:, None] + norms[None, :] - 2.0 * gram
    np.maximum(squared, 0.0, out=squared)
    distances = np.triu(np.sqrt(squared, out=squared), 1)
    return distances.sum(axis=0, dtype=np.float64) + distances.sum(axis=1, dtype=np.float64)


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
        filters = per_channel(self.weight_of(layer), layer.out_axis)
        alive = ~self.pruned_channels(layer)
        importance = np.zeros(len(filters))
        importance[alive] = distance_sums(filters[alive])
        return importance
