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


def arg_reduce(ctx, code, x, dim, keepdim):
    """ARG_MAX / ARG_MIN along logical ``dim`` (int64 indices, like PyTorch)."""
    if dim is None:
        ctx.fail("argmax / argmin over all elements is not supported; flatten first")
    dim = norm_dim(dim, x.rank)
    kept = [a for a in x.order if a != dim]
    perm = tuple(a - (a > dim) for a in kept)
    shape = tuple(s for i, s in enumerate(x.shape) if i != dim)
    out = ctx.tensor(shape, "int64", perm=perm)
    options = {"OutputType": 4}  # TensorType.INT64
    ctx.emit(code, [x, ctx.const(np.array([x.order.index(dim)], np.int32))], [out], **options)
    if keepdim:
        from slimkit.converter.ops.shape import reshape_to

        return reshape_to(ctx, out, tuple(1 if i == dim else s for i, s in enumerate(x.shape)))
    return out


@register("aten.argmax.default", emits=("ARG_MAX",))
def argmax(ctx, node, a):
    return arg_reduce(ctx, "ARG_MAX", a["self"], a["dim"], a["keepdim"])


@register("aten.argmin.default", emits=("ARG_MIN",))
def argmin(ctx, node, a):
    return arg_reduce(ctx, "ARG_MIN", a["self"], a["dim"], a["keepdim"])


def _extremum_dim(ctx, node, a, code, arg_code):
    x, dim, keep = a["self"], norm_dim(a["dim"], a["self"].rank), a["keepdim"]
    values = reduce(ctx, code, x, [dim], keep)
    wants_indices = any(u.args[1] == 1 and len(u.users) for u in node.users)
    return (values, arg_reduce(ctx, arg_code, x, dim, keep) if wants_indices else None)


@register("aten.max.dim", emits=("REDUCE_MAX", "ARG_MAX"))
def max_dim(ctx, node, a):
    return _extremum_dim(ctx, node, a, "REDUCE_MAX", "ARG_MAX")


@register("aten.min.dim", emits=("REDUCE_MIN", "ARG_MIN"))
def min_dim(ctx, node, a):
    return _extremum_dim(ctx, node, a, "REDUCE_MIN", "ARG_MIN")
