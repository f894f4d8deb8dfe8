"""SlimPruner: network slimming (Liu et al., ICCV 2017).

Train with an L1 penalty on the BatchNorm scales (``pruner.bn_l1_penalty()`` added to the
loss), then prune the channels whose ``|gamma|`` falls below one global threshold chosen over
all selected BatchNorm layers together. Masks cover the BatchNorm weight (gamma) and bias
(beta), so a pruned channel outputs exactly zero before the next layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from slimkit.algorithms.pruning.filter import FilterPruner
from slimkit.algorithms.pruning.registry import register_pruner
from slimkit.compression import Compressor, Layer, LayerConfig
from slimkit.compression.sparsity import prune_count, smallest_indices
from slimkit.utils import distributed


def _torch_l1(module: Any) -> Any:
    return module.weight.abs().sum()


def _keras_l1(module: Any) -> Any:
    from keras import ops  # only reached for Keras models

    return ops.sum(ops.abs(module.gamma))


# adapter name -> L1 norm of a BatchNorm layer's scale, as a differentiable native scalar.
_SCALE_L1: dict[str, Callable[[Any], Any]] = {"torch": _torch_l1, "keras": _keras_l1}


@register_pruner("slim")
class SlimPruner(FilterPruner):
    """Prune BatchNorm channels with the smallest ``|gamma|`` under one threshold for all selected layers.

    ``'default'`` in ``op_types`` selects the BatchNorm layers. The ``sparsity`` of the first
    config dict is the fraction of all selected channels removed (each layer keeps at least one).

    Args:
        model: a ``torch.nn.Module`` or ``keras.Model``.
        config_list: dicts with ``sparsity`` and BatchNorm ``op_types`` / ``op_names``.
        optimizer: passed to ``trainer``.
        trainer: optional ``trainer(model, optimizer, criterion, epoch)``; ``compress()`` then runs
            ``sparsifying_training_epochs`` epochs of sparsity training with ``criterion`` plus
            ``scale * sum |gamma|`` before computing the masks.
        criterion: the loss ``criterion(output, target)`` the trainer uses.
        sparsifying_training_epochs: epochs of sparsity training ``compress()`` runs with ``trainer``.
        scale: the L1 penalty factor (``lambda`` in the paper, 1e-4 by default).

    Example:

    >>> import torch
    >>> from slimkit.algorithms.pruning import SlimPruner
    >>> model = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(3))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([0.5, 2.0]))
    ...     _ = model[1].weight.copy_(torch.tensor([0.1, 3.0, 0.4]))
    >>> pruner = SlimPruner(model, [{'sparsity': 0.4, 'op_types': ['default']}])
    >>> _ = pruner.compress()
    >>> [pruner.get_masks()[name]['weight'].tolist() for name in ('0', '1')]
    [[1.0, 1.0], [0.0, 1.0, 0.0]]
    >>> loss_term = pruner.bn_l1_penalty()   # add to the training loss: 1e-4 * sum |gamma|
    >>> round(loss_term.item() * 1e4, 4)
    6.0
    """

    default_op_role: ClassVar[str] = "batchnorm"

    def __init__(self, model: Any, config_list: list[dict], optimizer: Any = None, trainer: Any = None,
                 criterion: Any = None, *, sparsifying_training_epochs: int = 1, scale: float = 1e-4):
        super().__init__(model, config_list)
        self.optimizer, self.trainer, self.criterion = optimizer, trainer, criterion
        self.sparsifying_training_epochs = sparsifying_training_epochs
        self.scale = scale

    def channel_importance(self, layer: Layer) -> np.ndarray:
        return np.abs(self.weight_of(layer).reshape(-1))

    def bn_l1_penalty(self, scale: float | None = None) -> Any:
        """``scale * sum |gamma|`` over the selected BatchNorm layers, a differentiable native scalar.

        Add it to the loss during (sparsity) training; ``scale`` defaults to the constructor's.
        """
        l1 = _SCALE_L1[self.adapter.name]
        return (self.scale if scale is None else scale) * sum(l1(layer.module) for layer in self.layers)

    def penalised_criterion(self, criterion: Callable[..., Any]) -> Callable[..., Any]:
        """``criterion`` plus :meth:`bn_l1_penalty`: what sparsity training minimises."""
        def loss(*args: Any, **kwargs: Any) -> Any:
            return criterion(*args, **kwargs) + self.bn_l1_penalty()

        return loss

    def compress(self) -> Any:
        """Wrap the layers, run sparsity training if a ``trainer`` was given, then compute the masks."""
        if self.wrapped:
            return self.model
        with self.wrapping():
            Compressor.compress(self)
            if self.trainer is not None:
                criterion = self.penalised_criterion(self.criterion)
                for epoch in range(self.sparsifying_training_epochs):
                    self.trainer(self.model, self.optimizer, criterion, epoch)
            self.update_masks()
        return self.model

    def update_masks(self) -> None:
        """Recompute every mask with the first config dict's sparsity, applied globally."""
        self._require_wrapped("update_masks")
        self.check_weights(self.layers)
        first = min((layer.config for layer in self.layers), key=lambda config: config.index)
        for layer in self.layers:
            self.set_mask(layer, self.calc_mask(layer, first))
        distributed.sync_masks(self)  # every rank installs rank 0's masks (no-op without a process group)

    def global_keep(self, sparsity: float) -> dict[str, np.ndarray]:
        """Keep-vectors of every selected layer under one threshold on ``|gamma|`` (at least one kept per layer)."""
        scores = [self.scores(layer) for layer in self.layers]
        flat = np.concatenate(scores)
        keep_flat = np.ones(len(flat), dtype=bool)
        keep_flat[smallest_indices(flat, prune_count(sparsity, len(flat)))] = False
        keeps, start = {}, 0
        for layer, score in zip(self.layers, scores):
            keep = keep_flat[start:start + len(score)].copy()
            if not keep.any():
                keep[int(np.argmax(score))] = True
            keeps[layer.name] = keep
            start += len(score)
        return keeps

    def calc_mask(self, layer: Layer, config: LayerConfig, **kwargs: Any) -> dict[str, np.ndarray | None]:
        with self.reading_weights():
            return self.masks_for_channels(layer, self.global_keep(config.sparsity)[layer.name])
