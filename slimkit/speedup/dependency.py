"""Channel groups for dependency-aware pruning: layers whose output channels are coupled.

Two conv / linear layers are in one group when their output channel ``i`` must be kept or
removed together for every ``i`` (outputs added in a residual, a depthwise conv following a
conv, a squeeze-excite gate multiplied onto a feature map, ...). ``partitions`` is the number of
groups of a grouped conv that produces or consumes the channels: each partition must lose as
many channels as the others.

Example:

>>> import torch
>>> from slimkit.speedup.dependency import channel_groups
>>> from slimkit.models.zoo import build
>>> model, x = build('resnet_basic')
>>> [g.members for g in channel_groups(model, x)][:1]
[['stem.0', 'body.0.conv2']]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.algorithms.pruning.filter import ChannelGroup
from slimkit.compression.followers import ChannelFollowers
from slimkit.speedup.state import KEEP

__all__ = ["ChannelFollowers", "ChannelGroup", "channel_dependencies", "channel_groups"]


def channel_groups(model: Any, dummy_input: Any) -> list[ChannelGroup]:
    """Groups of conv / linear layer names whose output channels are coupled, in model order.

    Layers coupled with nothing else are left out unless their channels go in units (an attention
    projection's heads). Layers sharing some channel sets are one group with ``units`` (grouped-query
    attention: the query projection has more heads than the key / value projections).
    """
    return channel_dependencies(model, dummy_input)[0]


def channel_dependencies(model: Any, dummy_input: Any) -> tuple[list[ChannelGroup], ChannelFollowers]:
    """:func:`channel_groups` and the BatchNorm layers that follow output channels, from one analysis.

    Example:

    >>> from slimkit.models.zoo import build
    >>> model, x = build('resnet_basic')
    >>> groups, followers = channel_dependencies(model, x)
    >>> followers.of({'stem.0'})
    ['stem.1', 'body.0.bn2']
    """
    from torch import nn

    from slimkit.speedup.analysis import analyse
    from slimkit.speedup.capture import capture
    from slimkit.speedup.module_ops import is_transposed_linear
    from slimkit.utils.threads import single_thread

    inputs = tuple(dummy_input) if isinstance(dummy_input, (tuple, list)) else (dummy_input,)
    with single_thread():
        captured = capture(model, inputs)
    plan = analyse(captured, {})
    uf = plan.union_find
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    roots = {path: _labels(uf.roots(variables)) for (path, role), variables in plan.variables.items()
             if role == "out" and (isinstance(plan.modules[path], (nn.modules.conv._ConvNd, nn.Linear))
                                   or is_transposed_linear(plan.modules[path]))}
    groups = []
    for members in _overlapping(roots):
        members = sorted(members, key=order.get)
        aligned = all(np.array_equal(roots[m], roots[members[0]]) for m in members)
        partitions = _partitions(plan, uf, roots[members[0]]) if aligned else 1
        whole = aligned and len(np.unique(roots[members[0]])) == len(roots[members[0]])
        if len(members) > 1 or partitions > 1 or not whole:
            groups.append(ChannelGroup(members, partitions, None if whole else {m: roots[m] for m in members}))
    return sorted(groups, key=lambda g: order[g.members[0]]), _followers(plan, order)


def _followers(plan: Any, order: dict[str, int]) -> ChannelFollowers:
    """Output-channel sets of every producing layer (conv / linear), and the layers with per-channel weights coupled
    with some of them: affine BatchNorm, LayerNorm over the last axis, embeddings (their columns), and free
    parameters (:mod:`slimkit.speedup.parameters`: an RMSNorm's ``weight`` under the module's name, any other as
    ``'<module>.<attribute>'`` along its last axis). Sets coupled with a model input or reaching a model output
    (always kept) are labelled -1: nothing follows them."""
    from torch import nn

    held = plan.union_find.roots(plan.outputs)

    def labels(variables: Any) -> np.ndarray:
        roots = plan.union_find.roots(variables)
        return np.where(roots == KEEP, -1, roots)

    def follower(path: str, role: str) -> str | None:
        module = plan.modules[path]
        if (path, role) in plan.parameters:
            return path if role == "weight" else f"{path}.{role}"
        if isinstance(module, nn.Embedding):
            return path if role == "out" else None
        if isinstance(module, nn.modules.batchnorm._NormBase):
            return path if role == "ch" and module.affine else None
        return path if role == "ch" and isinstance(module, nn.LayerNorm) and module.weight is not None else None

    sources = {path: labels(variables) for (path, role), variables in plan.variables.items()
               if role == "out" and not isinstance(plan.modules[path], nn.Embedding)}
    produced = np.concatenate(list(sources.values())) if sources else np.zeros(0, dtype=np.int64)
    followers, axes = {}, {}
    for (path, role), variables in sorted(plan.variables.items(), key=lambda item: order.get(item[0][0], -1)):
        name = follower(path, role)
        if name is not None:
            own = labels(variables)
            own = np.where(np.isin(own, held), -1, own)
            if np.isin(own[own >= 0], produced).any():
                followers[name] = own
                if isinstance(plan.modules[path], nn.Embedding):
                    axes[name] = 1
                elif name != path:
                    axes[name] = plan.parameters[(path, role)]
    return ChannelFollowers(sources, followers, axes)


def _labels(roots: np.ndarray) -> np.ndarray:
    """Channel-set labels; channels that are always kept (coupled with a model input) are labelled by
    position (negative), so they couple layers only position by position."""
    return np.where(roots == KEEP, -1 - np.arange(len(roots)), roots)


def _overlapping(roots: dict[str, np.ndarray]) -> list[list[str]]:
    """Layers grouped by shared channel sets (transitively)."""
    owner: dict[int, int] = {}
    parent = list(range(len(roots)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    names = list(roots)
    for index, name in enumerate(names):
        for root in {r for r in roots[name].tolist() if r >= 0} | {tuple(roots[name].tolist())}:
            if root in owner:
                parent[find(index)] = find(owner[root])
            else:
                owner[root] = index
    clusters: dict[int, list[str]] = {}
    for index, name in enumerate(names):
        clusters.setdefault(find(index), []).append(name)
    return list(clusters.values())


def _partitions(plan: Any, uf: Any, roots: np.ndarray) -> int:
    from torch import nn

    partitions = 1
    for (path, role), variables in plan.variables.items():
        module = plan.modules[path]
        if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
            continue
        if module.groups == module.in_channels == module.out_channels:
            continue  # depthwise: every channel is its own group, any subset works
        if role in ("in", "out") and np.array_equal(_labels(uf.roots(variables)), roots):
            partitions = max(partitions, module.groups)
    return partitions
