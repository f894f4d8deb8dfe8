"""Ops along one axis: cumsum (CUMSUM), flip (REVERSE_V2), roll (two slices concatenated), topk (TOPK_V2)."""

from __future__ import annotations

import numpy as np

from slimkit.converter.ops.common import norm_dim
from slimkit.converter.ops.dtypes import cast, out_dtype
from slimkit.converter.ops.elementwise import unary
from slimkit.converter.ops.norm import along_last
from slimkit.converter.ops.shape import reshape_to, strided_slice
from slimkit.converter.registry import register


def _axis(ctx, x, dim):
    return ctx.const(np.array(x.order.index(dim), np.int32))


@register("aten.cumsum.default", emits=("CUMSUM",))
def cumsum(ctx, node, a):
    x = cast(ctx, a["self"], out_dtype(node))
    dim = norm_dim(a["dim"], x.rank)
    out = ctx.tensor(x.shape, x.dtype, perm=x.perm)
    ctx.emit("CUMSUM", [x, _axis(ctx, x, dim)], [out], Exclusive=False, Reverse=False)
    return out


@register("aten.flip.default", emits=("REVERSE_V2",))
def flip(ctx, node, a):
    x = a["self"]
    for dim in sorted({norm_dim(d, x.rank) for d in a["dims"]}):
        if x.shape[dim] == 1:
            continue
        out = ctx.tensor(x.shape, x.dtype, perm=x.perm)
        ctx.emit("REVERSE_V2", [x, ctx.const(np.array([x.order.index(dim)], np.int32))], [out])
        x = out
    return x


def concat(ctx, parts, dim):
    """CONCATENATION of same-layout ``parts`` along logical ``dim``."""
    shape = list(parts[0].shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    out = ctx.tensor(tuple(shape), parts[0].dtype, perm=parts[0].perm)
    ctx.emit("CONCATENATION", parts, [out], Axis=parts[0].order.index(dim), FusedActivationFunction=0)
    return out


@register("aten.roll.default", emits=("STRIDED_SLICE", "CONCATENATION", "RESHAPE"))
def roll(ctx, node, a):
    x, shifts, dims = a["self"], list(a["shifts"]), list(a["dims"])
    if not dims:
        flat = reshape_to(ctx, x, (int(np.prod(x.shape)),))
        return reshape_to(ctx, _roll(ctx, flat, [(int(shifts[0]), 0)]), x.shape)
    return _roll(ctx, x, [(int(s), norm_dim(d, x.rank)) for s, d in zip(shifts, dims)])


def _roll(ctx, x, pairs):
    for shift, dim in pairs:
        n = x.shape[dim]
        shift %= n
        if shift == 0:
            continue
        tail = strided_slice(ctx, x, dim, n - shift, n, 1)
        head = strided_slice(ctx, x, dim, 0, n - shift, 1)
        x = concat(ctx, [tail, head], dim)
    return x


@register("aten.topk.default", emits=("TOPK_V2", "NEG", "CAST"))
def topk(ctx, node, a):
    x = a["self"]
    dim, k = norm_dim(a["dim"], x.rank), int(a["k"])
    x = along_last(ctx, x, dim)
    if not a["largest"]:
        x = unary(ctx, "NEG", x)
    shape = tuple(k if i == dim else s for i, s in enumerate(x.shape))
    values = ctx.tensor(shape, x.dtype, perm=x.perm)
    indices = ctx.tensor(shape, "int32", perm=x.perm)
    ctx.emit("TOPK_V2", [x, ctx.const(np.array(k, np.int32))], [values, indices])
    if not a["largest"]:
        values = unary(ctx, "NEG", values)
    return values, cast(ctx, indices, out_dtype(node, 1))
