"""Per-channel layers that follow pruned channels: a filter mask describes the whole channel.

A BatchNorm after a conv shifts a pruned (zero) filter output to ``beta - gamma * mean / sqrt(var + eps)``: a
nonzero constant that a later padded conv cannot absorb, so speedup would have to keep the channel. Masking the
BatchNorm's weight and bias with its filter makes that channel zero in the masked model too, so the masked model is
exactly what speedup builds and the channel is removed in full. The same holds for a transformer's residual
stream: the linear layers writing it are coupled by the residual adds, and its embeddings (columns) and LayerNorm
layers (weight and bias) follow them, so a pruned hidden channel is zero everywhere.

:class:`ChannelFollowers` holds, for every layer that produces channels (conv / linear outputs) and every layer that
follows them channel by channel (BatchNorm), a label per channel: equal labels are one channel set (coupled by the
graph: a residual add, a depthwise conv, a concat's slice). A follower channel is masked when every producer channel
of its set is removed.

Example:

>>> import numpy as np
>>> followers = ChannelFollowers(sources={'conv': np.array([3, 4, 5]), 'other': np.array([5, 6])},
...                              followers={'bn': np.array([3, 4, 5, -1])})
>>> followers.keep({'conv': np.array([True, False, True])})['bn'].tolist()   # 'other' keeps set 5
[False, True, True, True]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ChannelFollowers:
    """Channel-set labels of producers (``sources``) and followers (``followers``); -1 labels nothing.

    Attributes:
        sources: ``{layer: label of each output channel}`` for every conv / linear layer of the model.
        followers: ``{layer: label of each channel}`` for the per-channel layers (BatchNorm, LayerNorm, embeddings)
            whose channels are coupled with some source channel.
        axes: ``{follower: axis of its weight that indexes the channels}`` where it is not 0 (an embedding's
            columns: 1).
    """

    sources: dict[str, np.ndarray] = field(default_factory=dict)
    followers: dict[str, np.ndarray] = field(default_factory=dict)
    axes: dict[str, int] = field(default_factory=dict)

    def of(self, layers: set[str]) -> list[str]:
        """The followers with a channel coupled with an output channel of one of ``layers``."""
        labels = [self.sources[name] for name in layers if name in self.sources]
        produced = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        return [name for name, own in self.followers.items() if np.isin(own[own >= 0], produced).any()]

    def keep(self, removed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keep-vectors of every follower, given ``removed``: ``{source: boolean per output channel}`` for the
        layers a pruner masks. A follower channel goes when its set has a removed channel and no kept one (a source
        not in ``removed`` keeps all its channels)."""
        gone, kept = [], []
        for name, labels in self.sources.items():
            mask = removed.get(name)
            if mask is None:
                kept.append(labels)
            else:
                gone.append(labels[mask])
                kept.append(labels[~mask])
        gone_labels = np.concatenate(gone) if gone else np.zeros(0, dtype=np.int64)
        kept_labels = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        return {name: ~(np.isin(labels, gone_labels) & ~np.isin(labels, kept_labels) & (labels >= 0))
                for name, labels in self.followers.items()}
