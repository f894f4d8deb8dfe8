"""Norm-ranked filter pruners: L1 (Li et al., 2017, "Pruning Filters for Efficient ConvNets") and L2."""

from __future__ import annotations

import numpy as np

from slimkit.algorithms.pruning.filter import FilterPruner
from slimkit.algorithms.pruning.registry import register_pruner
from slimkit.compression import Layer
from slimkit.compression.channels import channel_rows


@register_pruner("l1")
class L1FilterPruner(FilterPruner):
    """Remove the output channels (filters) with the smallest L1 norm of their weights.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.pruning import L1FilterPruner
    >>> conv = torch.nn.Conv2d(1, 4, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = conv.weight.copy_(torch.tensor([1.0, -4.0, 0.5, 3.0]).view(4, 1, 1, 1))
    >>> pruner = L1FilterPruner(torch.nn.Sequential(conv), [{'sparsity': 0.5, 'op_types': ['Conv2d']}])
    >>> _ = pruner.compress()
    >>> pruner.get_masks()['0']['weight'].flatten().tolist()
    [0.0, 1.0, 0.0, 1.0]
    """

    def channel_importance(self, layer: Layer) -> np.ndarray:
        return np.abs(channel_rows(self.weight_of(layer), layer.out_axis)).sum(axis=1)


@register_pruner("l2")
class L2FilterPruner(FilterPruner):
    """Remove the output channels (filters) with the smallest L2 norm of their weights.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.pruning import L2FilterPruner
    >>> fc = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = fc.weight.copy_(torch.tensor([[3.0, 0.0], [2.0, 2.0], [0.0, 1.0]]))
    >>> pruner = L2FilterPruner(torch.nn.Sequential(fc), [{'sparsity': 0.34, 'op_types': ['Linear']}])
    >>> _ = pruner.compress()
    >>> pruner.get_masks()['0']['weight'][:, 0].tolist()
    [1.0, 1.0, 0.0]
    """

    def channel_importance(self, layer: Layer) -> np.ndarray:
        return np.sqrt(np.square(channel_rows(self.weight_of(layer), layer.out_axis)).sum(axis=1))
