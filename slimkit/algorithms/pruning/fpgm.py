"""FPGMPruner: filter pruning via geometric median (He et al., CVPR 2019)."""

from __future__ import annotations

import numpy as np

from slimkit.algorithms.pruning.filter import FilterPruner
from slimkit.algorithms.pruning.registry import register_pruner
from slimkit.compression import Layer
from slimkit.compression.sparsity import per_channel


def distance_sums(filters: np.ndarray) -> np.ndarray:
    """For each row of ``filters`` (channels x features), the sum of its Euclidean distances to all rows.

    Vectorised through the Gram matrix: ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``.

    Example:

    >>> import numpy as np
    >>> distance_sums(np.array([[0.0], [1.0], [2.0], [4.0], [10.0]])).tolist()
    [17.0, 14.0, 13.0, 15.0, 33.0]
    """
    filters = np.asarray(filters, dtype=np.float64)
    norms = np.einsum("ij,ij->i", filters, filters)
    squared = norms[:, None] + norms[None, :] - 2.0 * (filters @ filters.T)
    return np.sqrt(np.maximum(squared, 0.0)).sum(axis=1)


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
        filters = per_channel(layer.weight_array(), layer.out_axis)
        alive = ~self.pruned_channels(layer)
        importance = np.zeros(len(filters))
        importance[alive] = distance_sums(filters[alive])
        return importance
