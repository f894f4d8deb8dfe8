"""FilterPruner: the base of pruners that remove whole output channels.

A subclass only ranks channels (:meth:`FilterPruner.channel_importance`); this base turns the
ranking into masks over the weight's output-channel axis and the bias, and, with
``dependency_aware=True``, makes layers whose output channels are coupled (residual adds,
depthwise / group convs) keep the same channels, chosen from their summed importance, and masks the
BatchNorm layers that follow those channels with them, so that a removed filter's channel is
zero all the way and speedup removes it in full.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from slimkit.compression import Layer, LayerConfig, Pruner
from slimkit.compression.channels import channel_count, channel_rows
from slimkit.compression.followers import ChannelFollowers
from slimkit.compression.sparsity import channel_keep, channel_mask, prune_count


class ChannelGroup:
    """Layers whose output channels are pruned together.

    Attributes:
        members: qualified layer names in the group.
        partitions: the channels split into this many equal, contiguous partitions (conv
            ``groups``) that must each lose the same number of channels; 1 when unconstrained.
        units: optional ``{member: unit of each output channel}``: channels with the same unit (in any
            member) are kept or removed as one (an attention head: its query, key and value rows; under
            grouped-query attention a key / value head with its group of query heads). Without it,
            channel ``i`` of every member is one unit.

    Example:

    >>> import numpy as np
    >>> group = ChannelGroup(['q', 'v'], units={'q': np.array([0, 0, 1, 1]), 'v': np.array([0, 1])})
    >>> [keep.tolist() for keep in group.keep({'q': np.array([1., 1., 5., 5.]), 'v': np.array([0., 1.])}, 0.5)]
    [[False, False, True, True], [False, True]]
    """

    def __init__(self, members: list[str], partitions: int = 1, units: dict[str, np.ndarray] | None = None):
        self.members = list(members)
        self.partitions = partitions
        self.units = units

    def keep(self, scores: dict[str, np.ndarray], sparsity: float) -> list[np.ndarray]:
        """Keep-vectors of the members in ``scores`` (their order), removing ``sparsity`` of the units with
        the lowest summed score (and as many channels of each partition)."""
        names = list(scores)
        if self.units is None:
            keep = balanced_keep(np.sum([scores[n] for n in names], axis=0), sparsity, self.partitions)
            return [keep for _ in names]
        units = np.concatenate([self.units[n] for n in names])
        labels, inverse = np.unique(units, return_inverse=True)
        importance = np.zeros(len(labels))
        np.add.at(importance, inverse, np.concatenate([scores[n] for n in names]))
        kept = channel_keep(importance, sparsity)[inverse]
        bounds = np.cumsum([0] + [len(scores[n]) for n in names])
        return [kept[start:end] for start, end in zip(bounds[:-1], bounds[1:])]

    def __repr__(self) -> str:
        return f"ChannelGroup(members={self.members!r}, partitions={self.partitions})"


def balanced_keep(importance: np.ndarray, sparsity: float, partitions: int) -> np.ndarray:
    """Keep-vector pruning the same number of the least important channels in each partition.

    Example:

    >>> import numpy as np
    >>> balanced_keep(np.array([1.0, 2.0, 3.0, 9.0, 8.0, 0.5]), 0.34, 2).tolist()
    [False, True, True, True, True, False]
    """
    if partitions <= 1:
        return channel_keep(importance, sparsity)
    size = len(importance) // partitions
    per_partition = prune_count(sparsity, size)
    keep = np.ones(len(importance), dtype=bool)
    for start in range(0, len(importance), size):
        order = np.argsort(importance[start:start + size], kind="stable")[:per_partition]
        keep[start + order] = False
    return keep


class FilterPruner(Pruner):
    """Base of output-channel pruners.

    Args:
        model: a ``torch.nn.Module`` or ``keras.Model``.
        config_list: dicts with ``sparsity`` (the fraction of output channels to remove).
        dependency_aware: make coupled layers prune the same channels (found by the adapter: the traced
            graph of a PyTorch model, the layer graph of a Keras functional / Sequential model). The affine
            BatchNorm layers that follow the pruned channels are masked with them
            (:attr:`followers`: weight and bias zero where every channel they follow is removed; they appear in
            ``get_masks()`` and the mask file), so the masked model is what speedup builds.
        dummy_input: an example input, used to trace a PyTorch model (Keras models do not need it).
        optimizer: accepted in NNI's position (``L1FilterPruner(model, config_list, optimizer)``); not needed.

    Subclasses implement :meth:`channel_importance` (reading weights through :meth:`weight_of`).
    Channels the installed mask removes are removed first, so recomputed masks (AGP, repeated
    ``update_masks``) only grow sparser. Which channels those are is read from the installed mask
    itself, so masks restored from a checkpoint (``load_state_dict``, the model's state dict) count too.
    """

    def __init__(self, model: Any, config_list: list[dict], optimizer: Any = None, *, dependency_aware: bool = False,
                 dummy_input: Any = None):
        super().__init__(model, config_list, optimizer)
        # within reading_weights(): layer -> weight, and layer -> (channels its mask removes, whether the
        # mask removes only whole channels)
        self._weight_cache: dict[str, np.ndarray] | None = None
        self._mask_cache: dict[str, tuple[np.ndarray, bool]] | None = None
        self.dependency_aware = dependency_aware
        self.dummy_input = dummy_input
        groups, followers = (self.adapter.channel_dependencies(model, dummy_input) if dependency_aware
                             else ([], ChannelFollowers()))
        self.channel_groups: list[ChannelGroup] = groups
        self._held = self._groups_held_by_unpruned_layers()
        self._followers = followers
        self._follower_keep: dict[str, np.ndarray] | None = None
        self.followers: list[Layer] = self._follower_layers()
        self.layers += self.followers

    @property
    def ranked_layers(self) -> list[Layer]:
        """The layers the config_list selects, whose channels this pruner ranks (:attr:`followers` apart)."""
        return [layer for layer in self.layers if layer not in self.followers]

    def _follower_layers(self) -> list[Layer]:
        """The layers with per-channel weights that follow the output channels of the layers this pruner prunes
        (BatchNorm; in PyTorch also LayerNorm and embeddings on a residual stream): masked with them, so a removed
        channel is zero all along and speedup removes it in full. Each takes the config of the first pruned layer
        it follows."""
        pruned = [layer for layer in self.layers if layer.name not in self._held]
        selected = {layer.name for layer in self.layers}
        refs = {ref.name: ref for ref in self.adapter.discover(self.model)}
        free = [name for name in self._followers.followers if name not in refs]  # '<module>.<attribute>' (PyTorch)
        if free:
            refs.update({ref.name: ref for ref in self.adapter.parameter_refs(self.model, free, self._followers.axes)})
        self.follower_sources: dict[str, str] = {}  # follower -> the first pruned layer it follows
        for layer in pruned:
            for name in self._followers.of({layer.name}):
                self.follower_sources.setdefault(name, layer.name)
        configs = {layer.name: layer.config for layer in pruned}
        return [Layer(refs[name], configs[self.follower_sources[name]], self.adapter)
                for name in self._followers.followers
                if name in self.follower_sources and name not in selected and name in refs]

    def channel_importance(self, layer: Layer) -> np.ndarray:
        """One score per output channel of ``layer``; the lowest scores are pruned first."""
        raise NotImplementedError(f"{type(self).__name__} must implement channel_importance(layer).")

    def weight_of(self, layer: Layer) -> np.ndarray:
        """The weight of ``layer`` as numpy, read once per mask computation (subclasses should use this).

        Where the installed mask removes whole channels, this is the raw weight (no copy): the
        removed channels are ranked first whatever their values, and the kept ones are unmasked.
        Otherwise it is the masked weight.
        """
        cache = self._weight_cache
        if cache is not None and layer.name in cache:
            return cache[layer.name]
        installed = self._installed(layer)
        if installed is not None and installed[1]:
            weight = self.adapter.to_numpy(self.adapter.weight(layer, masked=False))
        else:
            weight = layer.weight_array()
        if cache is not None:
            cache[layer.name] = weight
        return weight

    @contextlib.contextmanager
    def reading_weights(self) -> Iterator[None]:
        """Within the block, :meth:`weight_of` reads each layer's weight only once."""
        outer = self._weight_cache is not None
        if not outer:
            self._weight_cache, self._mask_cache = {}, {}
        try:
            yield
        finally:
            if not outer:
                self._weight_cache = self._mask_cache = None

    def _installed(self, layer: Layer) -> tuple[np.ndarray, bool] | None:
        """(channels the installed weight mask removes entirely, whether it removes only whole channels), read
        from the mask; None while the layer is not wrapped."""
        cache = self._mask_cache
        if cache is not None and layer.name in cache:
            return cache[layer.name]
        if layer.wrapper is None:
            return None
        mask = self.adapter.installed_weight_mask(layer)
        if mask is None:  # no mask yet: nothing removed
            installed = (np.zeros(channel_count(tuple(self.adapter.weight(layer, masked=False).shape), layer.out_axis),
                                  dtype=bool), True)
        else:
            rows = channel_rows(self.adapter.to_numpy(mask), layer.out_axis)
            kept = rows.any(axis=1)
            installed = (~kept, bool(np.array_equal(rows.all(axis=1), kept)))  # each channel all kept or all removed
        if cache is not None:
            cache[layer.name] = installed
        return installed

    def pruned_channels(self, layer: Layer) -> np.ndarray:
        """Boolean vector: the output channels the installed weight mask removes entirely."""
        installed = self._installed(layer)
        if installed is not None:
            return installed[0]
        return np.zeros(channel_count(self.weight_of(layer).shape, layer.out_axis), dtype=bool)

    def scores(self, layer: Layer) -> np.ndarray:
        """:meth:`channel_importance` with already-pruned channels at ``-inf`` (they stay pruned)."""
        importance = np.asarray(self.channel_importance(layer), dtype=np.float64).copy()
        importance[self.pruned_channels(layer)] = -np.inf
        return importance

    def _groups_held_by_unpruned_layers(self) -> set[str]:
        """Selected layers of groups that also hold a layer this pruner does not prune (excluded or not
        matched): that layer keeps every channel, so speedup would keep them all and masking its partners
        would only lose accuracy. Those layers are left unpruned, with a warning naming the group."""
        selected = {layer.name for layer in self.layers}
        held: set[str] = set()
        for group in self.channel_groups:
            kept = [m for m in group.members if m not in selected]
            pruned = [m for m in group.members if m in selected]
            if kept and pruned:
                held.update(pruned)
                warnings.warn(
                    f"dependency_aware: {pruned} are not pruned: their output channels are coupled with {kept}, "
                    f"which the config_list does not prune, so no channel of the group "
                    f"{group.members} could be removed. Select the whole group, or exclude it.", stacklevel=4)
        return held

    def _group_of(self, layer: Layer) -> tuple[list[Layer], ChannelGroup]:
        names = {other.name: other for other in self.layers}
        for group in self.channel_groups:
            if layer.name in group.members:
                return [names[m] for m in group.members if m in names], group
        return [layer], ChannelGroup([layer.name])

    def set_mask(self, layer: Layer, mask: Any) -> None:
        super().set_mask(layer, mask)
        if layer not in self.followers:
            self._follower_keep = None  # the followers' masks follow the new one

    def calc_mask(self, layer: Layer, config: LayerConfig, **kwargs: Any) -> dict[str, np.ndarray | None]:
        if layer in self.followers:
            if self._follower_keep is None:
                self._follower_keep = self._followers.keep(
                    {source.name: self.pruned_channels(source) for source in self.ranked_layers})
            return self.masks_for_channels(layer, self._follower_keep[layer.name], self._followers.axes.get(layer.name))
        if layer.name in self._held:
            return self.masks_for_channels(layer, ~self.pruned_channels(layer))
        with self.reading_weights():
            members, group = self._group_of(layer)
            keeps = group.keep({member.name: self.scores(member) for member in members}, config.sparsity)
            return self.masks_for_channels(layer, keeps[[m.name for m in members].index(layer.name)])

    def masks_for_channels(self, layer: Layer, keep: np.ndarray,
                           axis: int | None = None) -> dict[str, np.ndarray | None]:
        """Weight and bias masks that keep the channels where ``keep`` is True, along the weight's ``axis`` (default:
        the output-channel axis)."""
        weight_shape = tuple(self.weight_of(layer).shape)
        has_bias = self.adapter.bias(layer, masked=False) is not None
        return {"weight": channel_mask(keep, weight_shape, layer.out_axis if axis is None else axis),
                "bias": keep.astype(np.float32) if has_bias else None}
