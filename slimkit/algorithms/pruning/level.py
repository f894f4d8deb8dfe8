"""LevelPruner: fine-grained magnitude pruning (Han et al., 2015)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from slimkit.algorithms.pruning.pattern import PATTERN_KEY, check_pattern, pattern_mask
from slimkit.algorithms.pruning.registry import pruned_weights, register_pruner
from slimkit.compression import Layer, LayerConfig, Pruner
from slimkit.compression.config import ConfigKey
from slimkit.compression.sparsity import magnitude_mask


@register_pruner("level")
class LevelPruner(Pruner):
    """Zero the ``sparsity`` fraction of each selected layer's weights with the smallest magnitude.

    Weights an earlier mask removed are removed first, so recomputed masks only grow sparser. With
    ``sparsity_pattern: 'N:M'`` the N smallest of every M consecutive weights along the input dimension are
    removed instead (see :mod:`slimkit.algorithms.pruning.pattern`).

    Args:
        model: a ``torch.nn.Module`` or ``keras.Model``.
        config_list: dicts with ``sparsity`` and ``op_types`` / ``op_names``; optionally ``sparsity_pattern``.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.pruning import LevelPruner
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[0.1, -4.0], [3.0, 0.2]]))
    >>> pruner = LevelPruner(model, [{'sparsity': 0.5, 'op_types': ['Linear']}])
    >>> model = pruner.compress()
    >>> pruner.get_masks()['0']['weight'].tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """

    config_keys: ClassVar[Mapping[str, ConfigKey]] = {**Pruner.config_keys, "sparsity_pattern": PATTERN_KEY}

    def validate_layer(self, layer: Layer) -> None:
        super().validate_layer(layer)
        check_pattern(type(self).__name__, layer)

    def calc_mask(self, layer: Layer, config: LayerConfig, **kwargs: Any) -> np.ndarray:
        pruned = pruned_weights(self, layer)
        if config.get("sparsity_pattern") is None:
            return magnitude_mask(layer.weight_array(), config.sparsity, pruned)
        scores = np.abs(layer.weight_array()).astype(np.float64)
        if pruned is not None:
            scores[pruned] = -np.inf
        return pattern_mask(layer, scores)
