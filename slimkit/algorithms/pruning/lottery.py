"""LotteryTicketPruner: iterative magnitude pruning with rewinding (Frankle & Carbin, ICLR 2019).

Round 0 trains the dense network. Each later round removes the same fraction of the surviving
weights by magnitude, so that after round ``i`` of ``n`` the kept fraction is
``(1 - sparsity) ** (i / n)``, and (``reset_weights=True``) rewinds every weight of the model
to its value at construction, the "winning ticket" initialisation, before training again.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from slimkit.algorithms.pruning.level import LevelPruner
from slimkit.algorithms.pruning.registry import register_pruner
from slimkit.compression import ConfigKey, Layer, LayerConfig
from slimkit.compression.config import FRACTION, POSITIVE_INT
from slimkit.compression.schedule import lottery_sparsity
from slimkit.compression.state import encode
from slimkit.errors import CompressionStateError, ConfigError


def _snapshot(model: Any) -> list[tuple[Any, Any]]:
    """(variable, saved copy) for every parameter and buffer (PyTorch) or weight (Keras) of ``model``."""
    if hasattr(model, "state_dict") and hasattr(model, "parameters"):  # torch.nn.Module
        tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
        return [(tensor, tensor.detach().clone()) for tensor in tensors]
    return [(variable, np.array(variable.numpy())) for variable in model.weights]  # keras.Model


def _restore(snapshot: list[tuple[Any, Any]]) -> None:
    for variable, saved in snapshot:
        if hasattr(variable, "assign"):
            variable.assign(saved)
        else:
            variable.detach().copy_(saved)


def _load_snapshot(snapshot: list[tuple[Any, Any]], arrays: list[np.ndarray]) -> None:
    """Write checkpoint ``arrays`` into the saved copies of :func:`_snapshot` (the variables are left alone)."""
    for (_, saved), array in zip(snapshot, arrays):
        if isinstance(saved, np.ndarray):
            saved[...] = array
        else:
            saved.copy_(saved.new_tensor(array))


def _state(obj: Any) -> Any:
    return copy.deepcopy(obj.state_dict()) if obj is not None and hasattr(obj, "state_dict") else None


@register_pruner("lottery", schedulable=False)
class LotteryTicketPruner(LevelPruner):
    """Find a winning ticket by iterative magnitude pruning and weight rewinding.

    Config keys: ``sparsity`` (reached after the last round) and ``prune_iterations`` (the number
    of pruning rounds ``n``, the same in every dict).

    Args:
        model: a ``torch.nn.Module`` or ``keras.Model``; its weights at construction are the ones
            every round rewinds to.
        config_list: dicts with ``sparsity`` and ``prune_iterations``.
        optimizer: a PyTorch optimizer whose state is rewound with the weights.
        lr_scheduler: a PyTorch LR scheduler whose state is rewound with the weights.
        reset_weights: rewind the weights at every :meth:`prune_iteration_start`.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.pruning import LotteryTicketPruner
    >>> model = torch.nn.Sequential(torch.nn.Linear(10, 10))
    >>> pruner = LotteryTicketPruner(model, [{'sparsity': 0.75, 'prune_iterations': 2, 'op_types': ['Linear']}])
    >>> model = pruner.compress()
    >>> for round_index in pruner.get_prune_iterations():
    ...     pruner.prune_iteration_start()
    ...     # ... train the model here ...
    ...     print(round_index, int((pruner.get_masks()['0']['weight'] == 0).sum()))
    0 0
    1 50
    2 75
    """

    config_keys: ClassVar[Mapping[str, ConfigKey]] = {
        "sparsity": ConfigKey(FRACTION, "a number in [0, 1)"),
        "prune_iterations": ConfigKey(POSITIVE_INT, "an integer >= 1"),
    }

    def __init__(self, model: Any, config_list: list[dict], optimizer: Any = None, lr_scheduler: Any = None,
                 reset_weights: bool = True):
        super().__init__(model, config_list)
        rounds = {layer.config.prune_iterations for layer in self.layers}
        if len(rounds) != 1:
            raise ConfigError(f"LotteryTicketPruner: Expected the same 'prune_iterations' in every config dict. "
                              f"Received: prune_iterations values {sorted(rounds)}")
        self.prune_iterations = rounds.pop()
        self.optimizer, self.lr_scheduler, self.reset_weights = optimizer, lr_scheduler, reset_weights
        self._initial_weights = _snapshot(model)
        self._optimizer_state = _state(optimizer)
        self._scheduler_state = _state(lr_scheduler)
        self.current_iteration: int | None = None

    def collect_state(self) -> dict[str, Any]:
        """Masks, the current round, and what every round rewinds to (weights, optimizer and scheduler state)."""
        return {**super().collect_state(), "current_iteration": self.current_iteration,
                "initial_weights": [self.adapter.state_array(saved) for _, saved in self._initial_weights],
                "optimizer_state": self._optimizer_state, "scheduler_state": self._scheduler_state}

    def check_state(self, state: Mapping[str, Any]) -> None:
        super().check_state(state)
        saved = [tuple(np.shape(array)) for array in state["initial_weights"]]
        expected = [tuple(copy_.shape) for _, copy_ in self._initial_weights]
        if saved != expected:
            raise CompressionStateError(f"LotteryTicketPruner.load_state_dict: the saved initial weights do not fit "
                                        f"this model. Expected shapes {expected}. Received: shapes {saved}")

    def restore_state(self, state: Mapping[str, Any]) -> None:
        super().restore_state(state)
        self.current_iteration = state["current_iteration"]
        _load_snapshot(self._initial_weights, state["initial_weights"])
        # optimizer / scheduler state dicts hold native tensors again (decoded to numpy with the rest)
        self._optimizer_state = encode(state["optimizer_state"], self.adapter.state_tensor)
        self._scheduler_state = encode(state["scheduler_state"], self.adapter.state_tensor)

    def get_prune_iterations(self) -> range:
        """The rounds ``0 .. prune_iterations``; round 0 trains the dense network."""
        return range(self.prune_iterations + 1)

    def round_sparsity(self, config: LayerConfig) -> float:
        """The sparsity of a layer under ``config`` in the current round."""
        return lottery_sparsity(config.sparsity, self.current_iteration or 0, self.prune_iterations)

    def calc_mask(self, layer: Layer, config: LayerConfig, **kwargs: Any) -> np.ndarray:
        return super().calc_mask(layer, dataclasses.replace(config, sparsity=self.round_sparsity(config)))

    def prune_iteration_start(self) -> None:
        """Begin the next round: prune the surviving weights to this round's sparsity (computed on
        the trained weights), then rewind the weights (and optimizer / scheduler state)."""
        self._require_wrapped("prune_iteration_start")
        index = 0 if self.current_iteration is None else self.current_iteration + 1
        if index > self.prune_iterations:
            raise CompressionStateError(f"LotteryTicketPruner: all {self.prune_iterations} rounds have run. Expected "
                                        f"at most {self.prune_iterations + 1} prune_iteration_start() calls.")
        self.current_iteration = index
        self.update_masks()
        if self.reset_weights:
            _restore(self._initial_weights)
            if self._optimizer_state is not None:
                self.optimizer.load_state_dict(copy.deepcopy(self._optimizer_state))
            if self._scheduler_state is not None:
                self.lr_scheduler.load_state_dict(copy.deepcopy(self._scheduler_state))
