"""Activation-ranked filter pruners: APoZ (Hu et al., 2016) and mean activation (Molchanov et al., 2017).

Both watch each selected layer's output through the adapter's output hooks, apply the
activation (ReLU or ReLU6) to it, and reduce it per output channel (the adapter states the
channel axis: 1 for PyTorch NCHW, -1 for Keras NHWC):

- APoZ, the Average Percentage of Zeros: the fraction of a channel's activations that are zero.
  The channels with the highest APoZ are pruned.
- Mean activation: a channel's mean activation. The channels with the lowest mean are pruned.

After ``compress()`` the next ``statistics_batch_num`` forward passes are recorded; the masks
are computed as soon as the last of them has run, and the hooks are removed. Under
``torch.distributed`` the per-channel sums are all-reduced first, so every rank's shard counts. With
``trainer=...`` ``compress()`` calls ``trainer(model, optimizer, criterion, epoch=0)`` itself to
produce those passes (as NNI does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from slimkit.algorithms.pruning.filter import FilterPruner
from slimkit.algorithms.pruning.registry import register_pruner
from slimkit.compression import Compressor, Layer
from slimkit.compression.finite import check_finite
from slimkit.errors import CompressionStateError, ConfigError
from slimkit.utils import distributed

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
}


class ChannelStatistics:
    """Running per-channel sums over the recorded batches: of the activation and of its zeros."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.batches = 0
        self.count = 0
        self.sums: np.ndarray | None = None
        self.zeros: np.ndarray | None = None

    def update(self, activation: np.ndarray, axis: int) -> None:
        rows = np.moveaxis(activation, axis, 0).reshape(activation.shape[axis], -1)
        sums, zeros = rows.sum(axis=1, dtype=np.float64), (rows == 0).sum(axis=1)
        self.sums = sums if self.sums is None else self.sums + sums
        self.zeros = zeros if self.zeros is None else self.zeros + zeros
        self.count += rows.shape[1]
        self.batches += 1

    def all_reduce(self) -> None:
        """Sum the statistics over the ranks of a process group (no-op without one), so that
        masks computed from them cover every rank's shard of the data."""
        if self.sums is None:
            return
        self.sums = np.asarray(distributed.all_reduce_sum(self.sums))
        self.zeros = np.asarray(distributed.all_reduce_sum(self.zeros))
        self.count = int(distributed.all_reduce_sum(self.count))


class ActivationRankFilterPruner(FilterPruner):
    """Base of the activation-ranked filter pruners; subclasses define :meth:`rank`.

    Args:
        model: a ``torch.nn.Module`` or ``keras.Model``.
        config_list: dicts with ``sparsity`` (the fraction of output channels to remove).
        optimizer: passed to ``trainer``.
        trainer: optional ``trainer(model, optimizer, criterion, epoch)`` that ``compress()``
            calls to run the forward passes the statistics come from.
        criterion: passed to ``trainer``.
        statistics_batch_num: how many forward passes after ``compress()`` are recorded.
        activation: ``'relu'`` or ``'relu6'``, applied to each layer's output.
        dependency_aware: make coupled layers prune the same channels (a PyTorch model needs ``dummy_input``).
        dummy_input: an example input, traced to find the coupled layers of a PyTorch model.
    """

    def __init__(self, model: Any, config_list: list[dict], optimizer: Any = None, trainer: Any = None,
                 criterion: Any = None, *, statistics_batch_num: int = 1, activation: str = "relu",
                 dependency_aware: bool = False, dummy_input: Any = None):
        name = type(self).__name__
        if activation not in ACTIVATIONS:
            raise ConfigError(f"{name}: Expected activation in {sorted(ACTIVATIONS)}. "
                              f"Received: activation={activation!r}")
        if isinstance(statistics_batch_num, bool) or not isinstance(statistics_batch_num, int) or (
                statistics_batch_num < 1):
            raise ConfigError(f"{name}: Expected statistics_batch_num to be an integer >= 1. "
                              f"Received: statistics_batch_num={statistics_batch_num!r}")
        super().__init__(model, config_list, dependency_aware=dependency_aware, dummy_input=dummy_input)
        self.optimizer, self.trainer, self.criterion = optimizer, trainer, criterion
        self.statistics_batch_num = statistics_batch_num
        self.activation = activation
        self.statistics: dict[str, ChannelStatistics] = {}
        self._handles: dict[str, Any] = {}
        self._limit: int | None = None
        self.masks_ready = False

    def validate_layer(self, layer: Layer) -> None:
        super().validate_layer(layer)
        if layer.kernel is not None:
            raise ConfigError(
                f"{type(self).__name__}: config_list[{layer.config.index}] selects {layer.name!r}, the "
                f"{layer.kernel!r} of a layer, whose output channels the layer never shows (its own output is "
                f"another kernel's), so they have no activations to rank. Expected layers with outputs of their own: "
                f"exclude it ({{'exclude': True, 'op_names': [{layer.name!r}]}}) or prune it with a weight-ranked "
                f"pruner (L1FilterPruner, FPGMPruner).")

    def rank(self, stats: ChannelStatistics) -> np.ndarray:
        """Channel importance from the recorded statistics (lowest pruned first)."""
        raise NotImplementedError(f"{type(self).__name__} must implement rank(stats).")

    def channel_importance(self, layer: Layer) -> np.ndarray:
        stats = self.statistics.get(layer.name)
        if stats is None or stats.batches == 0:
            raise CompressionStateError(
                f"{type(self).__name__}: no activations of layer {layer.name!r} were recorded. Expected forward "
                f"passes after compress() (or trainer=...) before masks are computed.")
        return self.rank(stats)

    def compress(self) -> Any:
        """Wrap the layers and start recording; masks follow the next ``statistics_batch_num`` passes."""
        if self.wrapped:
            return self.model
        with self.wrapping():
            Compressor.compress(self)
            self.record(self.statistics_batch_num)
            if self.trainer is not None:
                self.trainer(self.model, self.optimizer, self.criterion, 0)
                if not self.masks_ready:
                    self._finish()
        return self.model

    def record(self, limit: int | None) -> None:
        """Record the next ``limit`` forward passes of every layer (``None``: every pass until
        :meth:`stop_recording`), discarding earlier statistics."""
        self.stop_recording()
        self._limit = limit
        self.statistics = {layer.name: ChannelStatistics() for layer in self.ranked_layers}
        for layer in self.ranked_layers:
            self._handles[layer.name] = self.adapter.add_output_hook(layer, self._hook(layer))

    def unwrap_model(self) -> Any:
        self.stop_recording()
        return super().unwrap_model()

    def stop_recording(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: Layer) -> Callable[[np.ndarray], None]:
        stats = self.statistics[layer.name]
        axis = self.adapter.activation_axis(layer.module)
        apply = ACTIVATIONS[self.activation]

        def on_output(output: np.ndarray) -> None:
            if self._limit is not None and stats.batches >= self._limit:
                return
            check_finite(output, where=f"the output of layer {layer.name!r} ({type(self).__name__} ranks its "
                                       "channels by it)")
            stats.update(apply(output), axis)
            if self._limit is not None and stats.batches >= self._limit:
                self._handles.pop(layer.name).remove()
                if not self._handles:
                    self._finish()

        return on_output

    def _reduce_statistics(self) -> None:
        for stats in self.statistics.values():
            stats.all_reduce()

    def _finish(self) -> None:
        self.stop_recording()
        self._reduce_statistics()
        self.update_masks()
        self.masks_ready = True

    def collect_state(self) -> dict[str, Any]:
        """Masks, the statistics recorded so far, and which layers are still being recorded."""
        statistics = {name: {"batches": stats.batches, "count": stats.count, "sums": stats.sums, "zeros": stats.zeros}
                      for name, stats in self.statistics.items()}
        return {**super().collect_state(), "statistics": statistics, "limit": self._limit,
                "recording": [layer.name for layer in self.ranked_layers if layer.name in self._handles],
                "masks_ready": self.masks_ready}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        super().restore_state(state)
        self.stop_recording()
        self._limit, self.masks_ready = state["limit"], bool(state["masks_ready"])
        self.statistics = {}
        for name, entry in state["statistics"].items():
            stats = self.statistics[name] = ChannelStatistics()
            stats.batches, stats.count, stats.sums, stats.zeros = (int(entry["batches"]), int(entry["count"]),
                                                                   entry["sums"], entry["zeros"])
        for name in state["recording"]:
            layer = self.layer(name)
            self._handles[name] = self.adapter.add_output_hook(layer, self._hook(layer))

    def step(self) -> None:
        """Compute the masks if the recorded passes are complete but the masks are not yet set."""
        if self._limit is not None and not self.masks_ready and self.statistics and all(
                stats.batches >= self._limit for stats in self.statistics.values()):
            self._finish()

    # Driven by AGP: record every pass between two mask updates.
    def begin_tracking(self) -> None:
        """Record every forward pass from now on (AGP computes masks from the passes since its last update)."""
        self.record(None)

    def prepare_masks(self, epoch: int) -> bool:
        """Before AGP computes masks: run ``trainer`` if no pass has been recorded since the last update.

        Returns whether there are statistics to compute masks from.
        """
        if self.trainer is not None and not self.has_statistics():
            self.trainer(self.model, self.optimizer, self.criterion, epoch)
        if not self.has_statistics():
            return False
        self._reduce_statistics()
        return True

    def has_statistics(self) -> bool:
        return bool(self.statistics) and all(stats.batches for stats in self.statistics.values())

    def reset_statistics(self) -> None:
        for stats in self.statistics.values():
            stats.reset()


@register_pruner("apoz")
class ActivationAPoZRankFilterPruner(ActivationRankFilterPruner):
    """Prune the output channels with the highest Average Percentage of Zeros after the activation.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.pruning import ActivationAPoZRankFilterPruner
    >>> conv = torch.nn.Conv2d(1, 3, 1)
    >>> with torch.no_grad():
    ...     _ = conv.weight.copy_(torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1, 1))
    ...     _ = conv.bias.copy_(torch.tensor([0.0, -0.5, 0.5]))
    >>> pruner = ActivationAPoZRankFilterPruner(torch.nn.Sequential(conv),
    ...                                         [{'sparsity': 0.34, 'op_types': ['Conv2d']}])
    >>> model = pruner.compress()
    >>> _ = model(torch.linspace(-1, 1, 8).view(2, 1, 2, 2))  # channel 1 is mostly zero after ReLU
    >>> pruner.get_masks()['0']['weight'].flatten().tolist()
    [1.0, 0.0, 1.0]
    """

    def rank(self, stats: ChannelStatistics) -> np.ndarray:
        return 1.0 - stats.zeros / stats.count


@register_pruner("mean_activation")
class ActivationMeanRankFilterPruner(ActivationRankFilterPruner):
    """Prune the output channels with the lowest mean activation.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.pruning import ActivationMeanRankFilterPruner
    >>> fc = torch.nn.Linear(1, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = fc.weight.copy_(torch.tensor([[1.0], [0.2], [3.0]]))
    >>> pruner = ActivationMeanRankFilterPruner(torch.nn.Sequential(fc), [{'sparsity': 0.34, 'op_types': ['Linear']}])
    >>> model = pruner.compress()
    >>> _ = model(torch.ones(4, 1))
    >>> pruner.get_masks()['0']['weight'][:, 0].tolist()
    [1.0, 0.0, 1.0]
    """

    def rank(self, stats: ChannelStatistics) -> np.ndarray:
        return stats.sums / stats.count
