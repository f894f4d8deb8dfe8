"""SparseGPTPruner: one-shot pruning with error compensation (Frantar & Alistarh, 2023).

Columns are pruned left to right; each pruned weight's error is spread over the weights not yet visited,
through the inverse Hessian of the layer's calibration inputs (as GPTQ does for rounding). Unlike the other
pruners it changes the weights it keeps: ``compress()`` writes the compensated weights into the layer.

Example:

>>> import torch
>>> from slimkit.algorithms.pruning import SparseGPTPruner
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False))
>>> pruner = SparseGPTPruner(model, [{'sparsity': 0.5, 'sparsity_pattern': '2:4', 'op_types': ['Linear']}])
>>> model = pruner.calibrate([torch.randn(32, 8)]).compress()
>>> mask = pruner.get_masks()['0']['weight']
>>> mask.reshape(4, 2, 4).sum(-1).tolist()
[[2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slimkit.algorithms.pruning.wanda import CalibratedPruner
from slimkit.algorithms.quantization.gptq import inverse_hessian_factor, sweep_columns
from slimkit.compression import Layer, LayerConfig


def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, choose: Any, group: int,
              dampening: float = 0.01, width: int = 128) -> tuple[torch.Tensor, np.ndarray]:
    """Prune ``weight`` (out, in) with error compensation; returns ``(compensated weight, 0/1 mask)``.

    ``choose(scores, start)`` returns the 0/1 mask (numpy) of the ``group`` columns from ``start`` given their
    saliency ``w**2 / [H^-1]_jj**2``; it is called once per group, before the group's columns are visited.
    """
    factor, dead = inverse_hessian_factor(hessian.to(torch.float64), dampening)
    work = weight.detach().to(torch.float64).clone()
    work[:, dead] = 0.0
    mask = np.ones(tuple(work.shape), dtype=np.float32)
    diagonal = factor.diagonal()

    def prune(block: torch.Tensor, offset: int, index: int) -> torch.Tensor:
        if offset % group == 0:  # choose the group's pruned weights from their values as updated so far
            scores = block[:, offset:offset + group] ** 2 / diagonal[index:index + group][None, :] ** 2
            mask[:, index:index + group] = choose(scores.cpu().numpy(), index)
        return block[:, offset] * torch.as_tensor(mask[:, index], dtype=block.dtype, device=block.device)

    sweep_columns(work, factor, group * max(1, width // group), prune)
    return work.to(weight.dtype), mask


class SparseGPTPruner(CalibratedPruner):
    """Prune Linear layers to ``sparsity`` (in each output row of every block of 128 input columns) or to
    ``sparsity_pattern``, choosing weights by ``w**2 / [H^-1]_jj**2`` and compensating the kept weights.

    Args:
        model: a ``torch.nn.Module``.
        config_list: dicts with ``sparsity``, optionally ``sparsity_pattern`` ('2:4'), and ``op_types`` /
            ``op_names`` selecting Linear layers.
        dampening: diagonal dampening of the Hessian, a fraction of its mean diagonal.

    ``calibrate(batches)`` before ``compress()``. ``compress()`` writes the compensated weights into each layer
    (pruned positions are also exactly zero there); the masks keep them zero afterwards.
    """

    def __init__(self, model: Any, config_list: list[dict], *, dampening: float = 0.01):
        self.dampening = dampening
        super().__init__(model, config_list)

    def calc_mask(self, layer: Layer, config: LayerConfig, **kwargs: Any) -> np.ndarray:
        hessian = self.input_statistics(layer, layer.wrapper).hessian()
        group = config.sparsity_pattern[1] if config.sparsity_pattern is not None else 128
        compensated, mask = sparsegpt(self.matrix(layer), hessian, lambda scores, start: self.mask_from_scores(
            layer, scores, start), group, self.dampening)
        with torch.no_grad():
            layer.module.weight.copy_(self.as_matrix(layer, compensated))
        return self.as_matrix(layer, mask)
