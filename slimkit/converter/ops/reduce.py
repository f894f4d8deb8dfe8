"""Reductions: mean / sum / amax / amin over dims, with and without keepdim."""

from __future__ import annotations

import numpy as np

from slimkit.converter.ops.common import norm_dim
from slimkit.converter.registry import register


def reduce(ctx, code, x, dims, keepdim):
    if dims is None or len(dims) == 0:
        dims = list(range(x.rank))
    dims = sorted({norm_dim(d, x.rank) for d in dims})
    axes = sorted(x.order.index(d) for d in dims)
    if keepdim:
        shape = tuple(1 if i in dims else s for i, s in enumerate(x.shape))
        perm = x.perm
    else:
        kept = [a for a in x.order if a not in dims]
        rank_map = {a: i for i, a in enumerate(sorted(kept))}
        perm = tuple(rank_map[a] for a in kept)
        shape = tuple(s for i, s in enumerate(x.shape) if i not in dims)
    out = ctx.tensor(shape, x.dtype, perm=perm)
    ctx.emit(code, [x, ctx.const(np.array(axes, np.int32))], [out], KeepDims=bool(keepdim))
    return out


@register("aten.mean.dim", emits=("MEAN",))
def mean(ctx, node, a):
    return reduce(ctx, "MEAN", a["self"], a["dim"], a["keepdim"])


@register("aten.mean.default", emits=("MEAN",))
def mean_all(ctx, node, a):
    return reduce(ctx, "MEAN", a["self"], None, False)


@register("aten.sum.dim_IntList", emits=("SUM",))
def sum_(ctx, node, a):
    return reduce(ctx, "SUM", a["self"], a["dim"], a["keepdim"])


@register("aten.sum.default", emits=("SUM",))
def sum_all(ctx, node, a):
    return reduce(ctx, "SUM", a["self"], None, False)


@register("aten.amax.default", emits=("REDUCE_MAX",))
def amax(ctx, node, a):
    return reduce(ctx, "REDUCE_MAX", a["self"], a["dim"], a["keepdim"])


@register("aten.amin.default", emits=("REDUCE_MIN",))
def amin(ctx, node, a):
    return reduce(ctx, "REDUCE_MIN", a["self"], a["dim"], a["keepdim"])


@register("aten.max.dim", emits=("REDUCE_MAX", "ARG_MAX"))
def max_dim(ctx, node, a):
    x, dim, keep = a["self"], norm_dim(a["dim"], a["self"].rank), a["keepdim"]
    values = reduce(ctx, "REDUCE_MAX", x, [dim], keep)
    if len(node.users) and any(u.args[1] == 1 for u in node.users):
        ctx.fail("max(dim) indices are not supported; use amax for values")
    return (values, None)
