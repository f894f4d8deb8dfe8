"""WandaPruner: prune by weight magnitude times input activation norm (Sun et al., 2024), no weight update.

Example:

>>> import torch
>>> from slimkit.algorithms.pruning import WandaPruner
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 1, bias=False))
>>> with torch.no_grad():
...     _ = model[0].weight.copy_(torch.tensor([[1.0, 1.0, 2.0, 2.0]]))
>>> batches = [torch.tensor([[10.0, 1.0, 1.0, 10.0]])]        # feature 0 and 3 carry large inputs
>>> pruner = WandaPruner(model, [{'sparsity': 0.5, 'op_types': ['Linear']}])
>>> model = pruner.calibrate(batches).compress()
>>> pruner.get_masks()['0']['weight'].tolist()
[[1.0, 0.0, 0.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from slimkit.algorithms.linear_calibration import LinearCalibration
from slimkit.algorithms.pruning.pattern import PATTERN_KEY, check_pattern
from slimkit.algorithms.pruning.registry import pruned_weights
from slimkit.compression import Layer, LayerConfig, Pruner
from slimkit.compression.config import ConfigKey
from slimkit.compression.sparsity import nm_mask, row_mask


class CalibratedPruner(LinearCalibration, Pruner):
    """Base of the pruners that read Linear inputs: ``sparsity`` (per output row) or ``sparsity_pattern``,
    ``calibrate(batches)`` before ``compress()``; masks are computed layer by layer in model order, each on the
    model with the layers before it already pruned.

    Not in the pruner registry: the registry's pruners run from weights alone on either framework (AGP, the
    CLI and the every-pruner tests drive them), these need calibration batches and PyTorch Linear layers."""

    config_keys: ClassVar[Mapping[str, ConfigKey]] = {**Pruner.config_keys, "sparsity_pattern": PATTERN_KEY}

    def validate_layer(self, layer: Layer) -> None:
        self.check_linear(layer)
        check_pattern(type(self).__name__, layer)

    def compress(self) -> Any:
        if not self.wrapped:
            self.require_batches()
        return super().compress()

    def mask_from_scores(self, layer: Layer, scores: np.ndarray, start: int = 0) -> np.ndarray:
        """The ``(out, in)`` mask of input columns ``start`` to ``start + scores.shape[1]`` from their
        ``(out, in)`` scores: the pattern's, or per output row the ``sparsity`` fraction with the lowest scores.
        Weights an earlier mask removed go first."""
        pruned = pruned_weights(self, layer)
        if pruned is not None:
            scores = np.where(self.as_matrix(layer, pruned)[:, start:start + scores.shape[1]], -np.inf, scores)
        if layer.config.sparsity_pattern is not None:
            return nm_mask(scores, *layer.config.sparsity_pattern)
        return row_mask(scores, layer.config.sparsity)


class WandaPruner(CalibratedPruner):
    """Zero, in each output row of a Linear layer, the weights with the smallest ``|W_ij| * ||X_j||``, where
    ``||X_j||`` is the L2 norm of input feature ``j`` over the calibration batches.

    Args:
        model: a ``torch.nn.Module``.
        config_list: dicts with ``sparsity`` (per output row), optionally ``sparsity_pattern`` ('2:4'), and
            ``op_types`` / ``op_names`` selecting Linear layers.

    ``calibrate(batches)`` (tensors, tuples or dicts of model inputs) before ``compress()``.
    """

    def calc_mask(self, layer: Layer, config: LayerConfig, **kwargs: Any) -> np.ndarray:
        norms = self.adapter.to_numpy(self.input_statistics(layer, layer.wrapper, gram=False).column_norms())
        scores = np.abs(self.as_matrix(layer, layer.weight_array())).astype(np.float64) * norms[None, :]
        return self.as_matrix(layer, self.mask_from_scores(layer, scores))
