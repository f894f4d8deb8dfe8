"""Logical ops on boolean tensors (masks): and / or / xor / not (``&``, ``|``, ``^``, ``~`` on booleans)."""

from __future__ import annotations

import torch

from slimkit.converter.ir import Tensor
from slimkit.converter.ops.elementwise import binary, unary
from slimkit.converter.registry import register

_BINARY = {"and": "LOGICAL_AND", "or": "LOGICAL_OR", "xor": "NOT_EQUAL"}


def _operands(ctx, node, a):
    values = [a["self"], a["other"]]
    if any(isinstance(v, Tensor) and v.dtype != "bool" for v in values) or node.meta["val"].dtype != torch.bool:
        ctx.fail(f"{node.target} on {node.meta['val'].dtype} tensors is not supported (only on booleans; bitwise "
                 "ops on integers have their own converters)")
    return values


def _logical(ctx, node, a):
    kind = str(node.target).split(".")[1].strip("_").removeprefix("logical_")
    out = binary(ctx, _BINARY[kind], *_operands(ctx, node, a))
    out.dtype = "bool"
    return out


register("aten.__and__.Tensor", "aten.logical_and.default", emits=("LOGICAL_AND",))(_logical)
register("aten.__or__.Tensor", "aten.logical_or.default", emits=("LOGICAL_OR",))(_logical)
register("aten.__xor__.Tensor", "aten.logical_xor.default", emits=("NOT_EQUAL",))(_logical)


@register("aten.logical_not.default", "aten.bitwise_not.default", emits=("LOGICAL_NOT",))
def logical_not(ctx, node, a):
    x = a["self"]
    if x.dtype != "bool":
        ctx.fail(f"{node.target} of a {x.dtype} tensor is not supported (only of booleans)")
    return unary(ctx, "LOGICAL_NOT", x)
