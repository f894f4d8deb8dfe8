"""Consecutive weighted-layer pairs of a PyTorch model, found on the quantizer's captured graph.

A pair is a conv / linear layer ``first`` whose output reaches exactly one other conv / linear layer ``second``
through at most a BatchNorm, an activation and ops that keep channels apart and commute with a positive per-channel
scale (dropout, clone, max / average pooling). Cross-layer
equalization and the BatchNorm-statistics techniques read these pairs; every chain that is *not* a pair because
of what lies between (a non-positive-homogeneous activation, a second user of the tensor) is reported with its
reason, so a technique can say which layer it skipped and why.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.graph import capture_graph
>>> from slimkit.algorithms.quantization.techniques.chains import find_pairs
>>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
...                             torch.nn.Conv2d(4, 2, 1), torch.nn.GELU(), torch.nn.Conv2d(2, 2, 1)).eval()
>>> pairs, skipped = find_pairs(dict(model.named_modules()), capture_graph(model, (torch.randn(1, 1, 6, 6),)))
>>> [(p.first, p.bn, p.activation, p.second) for p in pairs]
[('0', '1', '2', '3')]
>>> skipped
{'3': "its output reaches '5' through 'gelu' (module '4'), which is not positive-homogeneous (f(x / s) != f(x) / s)"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit.frameworks.torch.graph import CapturedGraph
from slimkit.frameworks.torch.quant_graph import op_name

WEIGHTED_OPS = frozenset({"conv1d", "conv2d", "conv3d", "linear"})
BN_OPS = frozenset({"batch_norm", "native_batch_norm_legit_no_training"})
PASS_OPS = frozenset({"dropout", "clone", "contiguous", "alias", "max_pool1d", "max_pool2d", "max_pool3d",
                      "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d"})
"""Ops that keep channels apart and commute with a positive per-channel scale (pooling included)."""
HOMOGENEOUS = frozenset({"relu", "leaky_relu"})
"""Activations with ``f(x / s) == f(x) / s`` for every ``s > 0``: scaling commutes with them."""
CLIPPED = frozenset({"relu6", "hardtanh"})
"""ReLU6 (``hardtanh(0, 6)``): positive-homogeneous below the clip only."""


@dataclass
class Pair:
    """``first`` -> [``bn``] -> [``activation``] -> ``second`` (module paths; ``second_bn`` follows ``second``).

    Example:

    >>> Pair('features.0', 'features.3', bn='features.1', activation='features.2', activation_kind='relu')
    Pair(first='features.0', second='features.3', bn='features.1', activation='features.2', activation_kind='relu', \
second_bn=None)
    """

    first: str
    second: str
    bn: str | None = None
    activation: str | None = None
    activation_kind: str | None = None
    second_bn: str | None = None


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _weighted_module(modules: dict[str, nn.Module], captured: CapturedGraph, node: torch.fx.Node) -> str | None:
    """The module path of a conv / linear node computed by a plain ``nn.Conv*d`` / ``nn.Linear`` with its own weight."""
    if op_name(node) not in WEIGHTED_OPS:
        return None
    path = captured.module_path(node)
    module = modules.get(path)
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return None
    weight = node.args[1] if len(node.args) > 1 else None
    if not isinstance(weight, torch.fx.Node) or captured.state_names.get(weight.name) != f"{path}.weight":
        return None
    return path


def _bn_after(modules: dict[str, nn.Module], captured: CapturedGraph, node: torch.fx.Node) -> torch.fx.Node | None:
    user = _only_user(node)
    if user is not None and op_name(user) in BN_OPS and \
            isinstance(modules.get(captured.module_path(user)), nn.modules.batchnorm._BatchNorm):
        return user
    return None


def float_modules(quantizer: Any) -> dict[str, nn.Module]:
    """``{path: module}`` of the quantizer's model, a wrapped layer by its own (float) module."""
    modules = dict(quantizer.model.named_modules())
    modules.update({layer.name: layer.module for layer in quantizer.layers})
    return modules


def find_pairs(modules: dict[str, nn.Module], captured: CapturedGraph) -> tuple[list[Pair], dict[str, str]]:
    """The :class:`Pair` s of the captured model (``modules``: its modules by path), and ``{first: reason}`` for each
    weighted layer whose single consumer is a weighted layer reached through something scaling does not pass
    through."""
    counts: dict[str, int] = {}
    for node in captured.call_nodes():
        if op_name(node) in WEIGHTED_OPS:
            path = captured.module_path(node)
            counts[path] = counts.get(path, 0) + 1
    pairs, skipped = [], {}
    for node in captured.call_nodes():
        first = _weighted_module(modules, captured, node)
        if first is None or counts.get(first, 0) != 1:
            continue
        pair = Pair(first, "")
        current = node
        bn = _bn_after(modules, captured, current)
        if bn is not None:
            pair.bn, current = captured.module_path(bn), bn
        blocker = None
        while True:
            user = _only_user(current)
            if user is None:
                break
            kind = op_name(user)
            if kind in PASS_OPS:
                current = user
                continue
            second = _weighted_module(modules, captured, user)
            if second is not None:
                if user.args[0] is current and counts.get(second, 0) == 1:
                    pair.second = second
                break
            if pair.activation is not None or kind in WEIGHTED_OPS or kind in BN_OPS:
                break
            if kind in HOMOGENEOUS or kind in CLIPPED:
                pair.activation, pair.activation_kind = captured.module_path(user), kind
                current = user
                continue
            joined = any(arg is not current and arg.name not in captured.state_names for arg in user.all_input_nodes)
            blocker = (kind, captured.module_path(user), joined)
            current = user
        if not pair.second:
            continue
        if blocker is not None:
            kind, module, joined = blocker
            skipped[first] = (f"its output reaches {pair.second!r} through {kind!r} (module {module!r}), which "
                              + ("combines it with another tensor (a residual sum, a concatenation)" if joined
                                 else "is not positive-homogeneous (f(x / s) != f(x) / s)"))
            continue
        second_node = next(n for n in captured.call_nodes() if _weighted_module(modules, captured, n) == pair.second)
        second_bn = _bn_after(modules, captured, second_node)
        pair.second_bn = captured.module_path(second_bn) if second_bn is not None else None
        pairs.append(pair)
    return pairs, skipped


__all__ = ["CLIPPED", "HOMOGENEOUS", "Pair", "find_pairs", "float_modules"]
