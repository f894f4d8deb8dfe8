"""AGPPruner: automated gradual pruning (Zhu & Gupta, 2017, "To prune, or not to prune").

The sparsity rises from ``initial_sparsity`` to ``final_sparsity`` on a cubic schedule
(:func:`slimkit.compression.schedule.agp_sparsity`); ``update_epoch(epoch)`` recomputes the masks
whenever the target changes. Which weights go is decided by another registered pruner's mask rule,
picked by ``pruning_algorithm`` (``'level'``, ``'l1'``, ``'l2'``, ``'fpgm'``, ``'slim'``, ``'apoz'``,
``'mean_activation'``). Masks are monotone: a weight or channel once pruned stays pruned.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from slimkit.algorithms.pruning.registry import get_pruner, register_pruner
from slimkit.compression import Compressor, ConfigKey, Layer, LayerConfig, Pruner
from slimkit.compression.config import FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, LayerRef
from slimkit.compression.schedule import agp_sparsity
from slimkit.errors import ConfigError
from slimkit.utils import distributed

_DELEGATE_ONLY_KEYS = ("initial_sparsity", "final_sparsity", "start_epoch", "end_epoch", "frequency")


@register_pruner("agp", schedulable=False)
class AGPPruner(Pruner):
    """Prune gradually on AGP's cubic schedule, with the mask rule of ``pruning_algorithm``.

    Config keys (besides ``op_types`` / ``op_names`` / ``exclude``): ``final_sparsity`` and
    ``end_epoch`` (required), ``initial_sparsity`` (0), ``start_epoch`` (0), ``frequency`` (1).

    Args:
        model: a ``torch.nn.Module`` or ``keras.Model``.
        config_list: the AGP config dicts.
        optimizer: accepted for NNI compatibility (and passed to a ``trainer``).
        pruning_algorithm: the registered pruner whose mask rule decides what is pruned.
        trainer: ``trainer(model, optimizer, criterion, epoch)``: activation-based rules call it
            for statistics when no forward pass ran since the last mask update.
        criterion: passed to ``trainer``.
        dependency_aware: for filter rules, make coupled layers prune the same channels.
        dummy_input: an example input (``dependency_aware`` on a PyTorch model traces it).
        algo_kwargs: further keyword arguments of the ``pruning_algorithm`` pruner
            (e.g. ``{'statistics_batch_num': 2, 'activation': 'relu6'}``).

    Raises:
        ConfigError: an unknown ``pruning_algorithm``, ``end_epoch <= start_epoch``, or
            ``initial_sparsity > final_sparsity``.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.pruning import AGPPruner
    >>> model = torch.nn.Sequential(torch.nn.Linear(10, 10))
    >>> pruner = AGPPruner(model, [{'final_sparsity': 0.8, 'end_epoch': 4, 'op_types': ['Linear']}],
    ...                    pruning_algorithm='level')
    >>> model = pruner.compress()
    >>> for epoch in range(5):
    ...     pruner.update_epoch(epoch)
    ...     mask = pruner.get_masks()['0']['weight']
    ...     print(epoch, round(pruner.target_sparsity(pruner.layers[0]), 4), int((mask == 0).sum()))
    0 0.0 0
    1 0.4625 46
    2 0.7 70
    3 0.7875 79
    4 0.8 80
    """

    config_keys: ClassVar[Mapping[str, ConfigKey]] = {
        "initial_sparsity": ConfigKey(FRACTION, "a number in [0, 1)", 0.0),
        "final_sparsity": ConfigKey(FRACTION, "a number in [0, 1)"),
        "start_epoch": ConfigKey(NON_NEGATIVE_INT, "an integer >= 0", 0),
        "end_epoch": ConfigKey(POSITIVE_INT, "an integer > start_epoch"),
        "frequency": ConfigKey(POSITIVE_INT, "an integer >= 1", 1),
    }

    def __init__(self, model: Any, config_list: list[dict], optimizer: Any = None, *,
                 pruning_algorithm: str = "level", trainer: Any = None, criterion: Any = None,
                 dependency_aware: bool = False, dummy_input: Any = None, algo_kwargs: dict | None = None):
        rule_class = get_pruner(pruning_algorithm, schedulable=True)
        self.default_op_role = rule_class.default_op_role
        super().__init__(model, config_list)
        for layer in self.layers:
            config = layer.config
            if config.end_epoch <= config.start_epoch or config.initial_sparsity > config.final_sparsity:
                raise ConfigError(
                    f"AGPPruner: config_list[{config.index}] Expected end_epoch > start_epoch and "
                    f"initial_sparsity <= final_sparsity. Received: start_epoch={config.start_epoch}, "
                    f"end_epoch={config.end_epoch}, initial_sparsity={config.initial_sparsity}, "
                    f"final_sparsity={config.final_sparsity}")
        self.optimizer = optimizer
        self.pruning_algorithm = pruning_algorithm
        self.rule = self._make_rule(rule_class, model, config_list, dict(
            optimizer=optimizer, trainer=trainer, criterion=criterion, dependency_aware=dependency_aware,
            dummy_input=dummy_input), algo_kwargs or {})
        self.epoch = 0
        self._applied: dict[str, float] = {}

    def _make_rule(self, rule_class: type, model: Any, config_list: list[dict], kwargs: dict,
                   algo_kwargs: dict) -> Pruner:
        """The ``pruning_algorithm`` pruner on the same layers, its ``sparsity`` set per call."""
        rule_config_list = []
        for entry in config_list:
            entry = {key: value for key, value in entry.items() if key not in _DELEGATE_ONLY_KEYS}
            if not entry.get("exclude", False):
                entry["sparsity"] = 0.0
            rule_config_list.append(entry)
        defaults = {"optimizer": None, "trainer": None, "criterion": None, "dependency_aware": False,
                    "dummy_input": None}
        kwargs = {key: value for key, value in kwargs.items() if value is not defaults[key]}
        if "optimizer" not in inspect.signature(rule_class.__init__).parameters:
            kwargs.pop("optimizer", None)  # AGP itself accepts it; only trainer-driven rules use it
        try:
            rule = rule_class(model, rule_config_list, **{**kwargs, **algo_kwargs})
        except TypeError as error:
            raise ConfigError(f"AGPPruner: pruning_algorithm={self.pruning_algorithm!r} does not take these "
                              f"arguments ({error}). Received: {sorted({**kwargs, **algo_kwargs})}") from None
        self._rule_configs = {layer.name: layer.config for layer in rule.layers}
        # a filter rule's followers (BatchNorm after pruned filters, ...) follow on AGP's schedule of their source
        configs = {layer.name: layer.config for layer in self.layers}
        followers = [Layer(LayerRef(f.name, f.type, f.module), configs[rule.follower_sources[f.name]], self.adapter)
                     for f in getattr(rule, "followers", [])]
        if followers:
            rule.followers = followers
            self.layers += followers
        rule.layers = self.layers  # one set of layers (and wrappers) for the schedule and the rule
        return rule

    def target_sparsity(self, layer: Layer, epoch: int | None = None) -> float:
        """The scheduled sparsity of ``layer`` at ``epoch`` (default: the current epoch)."""
        config = layer.config
        return agp_sparsity(self.epoch if epoch is None else epoch, config.initial_sparsity,
                            config.final_sparsity, config.start_epoch, config.end_epoch, config.frequency)

    def compress(self) -> Any:
        """Wrap the layers and install the masks of the current epoch's target (none at ``initial_sparsity=0``)."""
        if not self.wrapped:
            with self.wrapping():
                Compressor.compress(self)
                self._applied.clear()  # fresh wrappers hold no masks
                self.rule.wrapped = True
                begin = getattr(self.rule, "begin_tracking", None)
                if begin is not None:
                    begin()
                self.update_masks()
        return self.model

    def unwrap_model(self) -> Any:
        stop = getattr(self.rule, "stop_recording", None)
        if stop is not None:
            stop()
        self.rule.wrapped = False
        return super().unwrap_model()

    def step(self) -> None:
        """Install masks an activation-based rule had to defer for lack of forward passes."""
        if self.wrapped and any(self._applied.get(layer.name) != self.target_sparsity(layer) for layer in self.layers):
            self.update_masks()

    def update_epoch(self, epoch: int) -> None:
        """Move the schedule to ``epoch``; recompute the masks of layers whose target changed."""
        self.epoch = epoch
        if self.wrapped:
            self.update_masks()

    def update_masks(self) -> None:
        """Install the scheduled masks of the layers whose target sparsity changed since the last update."""
        self._require_wrapped("update_masks")
        changed = [layer for layer in self.layers if self._applied.get(layer.name) != self.target_sparsity(layer)]
        if not changed:
            return
        self.check_weights(changed)
        if any(self.target_sparsity(layer) > 0 for layer in changed):
            prepare = getattr(self.rule, "prepare_masks", None)
            if prepare is not None and not prepare(self.epoch):
                return  # no statistics yet: the masks follow at a later step() or update_epoch()
        for layer in changed:
            self.set_mask(layer, self.calc_mask(layer, layer.config))
            self._applied[layer.name] = self.target_sparsity(layer)
        distributed.sync_masks(self)  # every rank installs rank 0's masks (no-op without a process group)
        reset = getattr(self.rule, "reset_statistics", None)
        if reset is not None:
            reset()

    def collect_state(self) -> dict[str, Any]:
        """Masks, the schedule's epoch, the sparsity each layer's mask was computed for, and the rule's own state
        (an activation rule's statistics)."""
        rule = {key: value for key, value in self.rule.collect_state().items() if key != "masks"}
        return {**super().collect_state(), "epoch": self.epoch, "applied": dict(self._applied), "rule": rule}

    def check_state(self, state: Mapping[str, Any]) -> None:
        super().check_state(state)
        self.rule.check_state(state.get("rule") or {})

    def restore_state(self, state: Mapping[str, Any]) -> None:
        super().restore_state(state)
        self.epoch = int(state["epoch"])
        self._applied = {name: float(value) for name, value in state["applied"].items()}
        self.rule.restore_state(state.get("rule") or {})

    def set_mask(self, layer: Layer, mask: Any) -> None:
        """Install through the rule, which may track what its masks removed."""
        self.rule.set_mask(layer, mask)

    def calc_mask(self, layer: Layer, config: LayerConfig, **kwargs: Any) -> Any:
        sparsity = self.target_sparsity(layer)
        if sparsity == 0:
            return np.ones(tuple(self.adapter.weight(layer, masked=False).shape), dtype=np.float32)
        return self.rule.calc_mask(layer, dataclasses.replace(self._rule_configs[layer.name], sparsity=sparsity))
