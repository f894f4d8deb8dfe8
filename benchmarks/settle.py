"""BatchNorm running statistics for benchmark models with random weights: the plain average over given batches,
so that a random initialisation keeps its activations O(1) before it is quantized or timed.

>>> import torch
>>> from settle import settle_batchnorm
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
>>> _ = settle_batchnorm(model, [torch.randn(2, 3, 8, 8)])
>>> model.training, int(model[1].num_batches_tracked)
(False, 1)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def settle_batchnorm(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> torch.nn.Module:
    """Re-estimate every BatchNorm2d's running statistics as the plain average over ``batches``; returns ``model``
    in eval mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    return model.eval()
