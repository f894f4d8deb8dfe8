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

from slimkit.algorithms.pruning.filter import ChannelGroup

__all__ = ["ChannelGroup", "channel_groups"]


def channel_groups(model: Any, dummy_input: Any) -> list[ChannelGroup]:
    """Groups of conv / linear layer names whose output channels are coupled, in model order.

    Layers coupled with nothing else are left out. A layer whose channels are coupled only in
    part (a concat feeding a residual add) is left out too: no single channel mask fits it.
    """
    from torch import nn

    from slimkit.speedup.analysis import analyse, single_thread
    from slimkit.speedup.capture import capture

    inputs = tuple(dummy_input) if isinstance(dummy_input, (tuple, list)) else (dummy_input,)
    with single_thread():
        captured = capture(model, inputs)
    plan = analyse(captured, {})
    uf = plan.union_find
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    by_roots: dict[tuple, list[str]] = {}
    for (path, role), variables in plan.variables.items():
        module = plan.modules[path]
        if role != "out" or not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        by_roots.setdefault(tuple(uf.roots(variables).tolist()), []).append(path)
    groups = []
    for roots, members in by_roots.items():
        partitions = 1
        for (path, role), variables in plan.variables.items():
            module = plan.modules[path]
            if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
                continue
            if module.groups == module.in_channels == module.out_channels:
                continue  # depthwise: every channel is its own group, any subset works
            if role in ("in", "out") and tuple(uf.roots(variables).tolist()) == roots:
                partitions = max(partitions, module.groups)
        if len(members) > 1 or partitions > 1:
            groups.append(ChannelGroup(sorted(members, key=order.get), partitions))
    return sorted(groups, key=lambda g: order[g.members[0]])
