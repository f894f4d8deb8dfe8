"""Helpers shared by converters: peephole fusion into the producing op, axis bookkeeping."""

from __future__ import annotations

ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
# The ops whose fused activation LiteRT honours, and which ones (measured in LiteRT: a fused TANH is ignored
# by every kernel and rejected at load by FULLY_CONNECTED; CONCATENATION ignores any fused activation).
FUSABLE = dict.fromkeys(("ADD", "SUB", "MUL", "DIV", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
                         "AVERAGE_POOL_2D", "MAX_POOL_2D", "TRANSPOSE_CONV"), frozenset(ACTIVATIONS) - {"NONE"})


def sole_producer(ctx, node_arg, t, codes):
    """The op producing ``t`` if it is in ``codes`` and the current node is its only consumer."""
    if ctx.options.optimize < 1:
        return None
    op = getattr(t, "producer", None)
    if op is not None and op.see_through:
        op = op.inputs[0].producer
    if op is None or op.code not in codes or len(op.outputs) != 1:
        return None
    arg = ctx.node.args[0] if node_arg is None else node_arg
    if not hasattr(arg, "users") or len(readers(arg)) != 1:
        return None
    return op


_OVERWRITES = frozenset({"aten.copy_.default"})


def readers(node) -> list:
    """The users of fx ``node`` that read its value: an in-place copy into it (``x += y`` as the quantizer writes it,
    ``copy_(x, result)``) overwrites ``x`` without reading it."""
    return [user for user in node.users if str(user.target) not in _OVERWRITES or user.args[0] is not node]


def fuse_activation(ctx, t, activation: str):
    """Fold ``activation`` into the op producing ``t``; returns ``t`` on success, else None."""
    op = sole_producer(ctx, None, t, FUSABLE)
    if op is None or activation not in FUSABLE[op.code] or op.options.get("FusedActivationFunction", 0) != 0:
        return None
    op.options["FusedActivationFunction"] = ACTIVATIONS[activation]
    return t


def norm_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim
