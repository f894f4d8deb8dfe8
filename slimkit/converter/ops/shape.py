"""Shape and layout ops: reshape family, permute / transpose (free relabelling), concat, split,
slice / select / index, pad."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter import layout
from slimkit.converter.ir import Tensor
from slimkit.converter.ops.common import norm_dim
from slimkit.converter.registry import register


def reshape_to(ctx, x: Tensor, shape) -> Tensor:
    """Reshape keeping ``x``'s memory order where the merged / split axes are contiguous in it
    (e.g. NHWC ``flatten(2)`` or a channel split needs no TRANSPOSE)."""
    shape = tuple(int(s) for s in shape)
    if shape == x.shape and x.perm is None:
        return x
    orders = layout.reshape_orders(x.shape, x.order, shape) if x.perm is not None and ctx.options.optimize else None
    if orders is None:
        x, out_order = layout.logical_bytes(ctx, x), layout.identity(len(shape))
    else:
        in_order, out_order = orders
        if not layout.memory_compatible(x.shape, x.order, in_order):
            x = ctx.layout(x, in_order)
    out = ctx.tensor(shape, x.dtype, perm=out_order)
    physical = [shape[b] for b in out.order]
    ctx.emit("RESHAPE", [x, ctx.const(np.array(physical, np.int32))], [out], NewShape=physical)
    return out


@register("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
          "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default", "aten.unsqueeze.default",
          "aten.view_as.default", "aten.reshape_as.default", "aten.unflatten.int", emits=("RESHAPE",))
def reshape(ctx, node, a):
    return reshape_to(ctx, a["self"], node.meta["val"].shape)


def relabel(x: Tensor, dims) -> Tensor:
    """A view of ``x`` whose logical axis j is ``x``'s logical axis dims[j]: no data moves."""
    dims = [norm_dim(d, x.rank) for d in dims]
    order = tuple(dims.index(a) for a in x.order)
    base = x.base or x
    return Tensor(base.name, tuple(x.shape[d] for d in dims), x.dtype, perm=order, base=base)


@register("aten.permute.default", emits=())
def permute(ctx, node, a):
    return relabel(a["self"], a["dims"])


@register("aten.transpose.int", emits=())
def transpose(ctx, node, a):
    x = a["self"]
    dims = list(range(x.rank))
    d0, d1 = norm_dim(a["dim0"], x.rank), norm_dim(a["dim1"], x.rank)
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return relabel(x, dims)


@register("aten.t.default", "aten.numpy_T.default", emits=())
def t_(ctx, node, a):
    x = a["self"]
    return relabel(x, list(range(x.rank))[::-1])


def _common_order(values, rank):
    for v in values:
        if isinstance(v, Tensor) and not v.is_const and v.rank == rank and v.perm is not None:
            return v.order
    return layout.identity(rank)


def _tensor_in(ctx, v, order):
    if isinstance(v, torch.Tensor):
        v = ctx.as_tensor(v)
    return ctx.layout(v, order)


def cat_tensors(ctx, tensors: list, axis: int) -> Tensor:
    """One CONCATENATION of same-order activations along logical ``axis`` (the tensor itself when there is one)."""
    if len(tensors) == 1:
        return tensors[0]
    shape = list(tensors[0].shape)
    shape[axis] = sum(t.shape[axis] for t in tensors)
    out = ctx.tensor(tuple(shape), tensors[0].dtype, perm=tensors[0].perm)
    ctx.emit("CONCATENATION", list(tensors), [out], Axis=tensors[0].order.index(axis), FusedActivationFunction=0)
    return out


@register("aten.cat.default", "aten.concat.default", emits=("CONCATENATION",))
def cat(ctx, node, a):
    values = [v for v in a["tensors"] if not (isinstance(v, torch.Tensor) and v.numel() == 0)]
    rank = len(node.meta["val"].shape)
    order = _common_order(values, rank)
    return cat_tensors(ctx, [_tensor_in(ctx, v, order) for v in values], norm_dim(a["dim"], rank))


#: SPLIT outputs XNNPACK's delegate takes (its even split): more pieces, or uneven ones, are sliced one by one
XNNPACK_SPLITS = range(2, 5)


def _split(ctx, node, x, sizes, dim):
    """``x`` cut along ``dim`` into pieces of ``sizes``: one SPLIT when they are 2-4 equal pieces, else one
    STRIDED_SLICE (stride 1) per piece. XNNPACK runs both, at int8 too; it takes no SPLIT_V, whose every use would
    split the graph into one more delegate partition."""
    dim = norm_dim(dim, x.rank)
    if len(set(sizes)) != 1 or len(sizes) not in XNNPACK_SPLITS:
        starts = np.cumsum([0, *sizes[:-1]])
        return tuple(strided_slice(ctx, x, dim, int(start), int(start) + s, 1) for start, s in zip(starts, sizes))
    shape = list(x.shape)
    shape[dim] = sizes[0]
    outs = [ctx.tensor(tuple(shape), x.dtype, perm=x.perm) for _ in sizes]
    ctx.emit("SPLIT", [ctx.const(np.array(x.order.index(dim), np.int32)), x], outs, NumSplits=len(sizes))
    return tuple(outs)


@register("aten.split.Tensor", emits=("SPLIT", "STRIDED_SLICE"))
def split(ctx, node, a):
    x, size, dim = a["self"], int(a["split_size"]), norm_dim(a["dim"], a["self"].rank)
    total = x.shape[dim]
    sizes = [min(size, total - i) for i in range(0, total, size)]
    return _split(ctx, node, x, sizes, dim)


@register("aten.split_with_sizes.default", emits=("SPLIT", "STRIDED_SLICE"))
def split_with_sizes(ctx, node, a):
    return _split(ctx, node, a["self"], [int(s) for s in a["split_sizes"]], a["dim"])


@register("aten.chunk.default", emits=("SPLIT", "STRIDED_SLICE"))
def chunk(ctx, node, a):
    return _split(ctx, node, a["self"], [int(v.shape[a["dim"]]) for v in node.meta["val"]], a["dim"])


@register("aten.unbind.int", emits=("SPLIT", "STRIDED_SLICE", "RESHAPE"))
def unbind(ctx, node, a):
    """The pieces of a split into size-1 slices, each reshaped without ``dim`` (XNNPACK takes no UNPACK: a
    ``q, k, v = qkv.unbind(0)`` split the delegated graph)."""
    x, dim = a["self"], norm_dim(a["dim"], a["self"].rank)
    if x.dtype == "int64":  # SPLIT has no int64 kernel
        return tuple(strided_slice(ctx, x, dim, i, i + 1, 1, shrink=True) for i in range(x.shape[dim]))
    shape = tuple(s for i, s in enumerate(x.shape) if i != dim)
    return tuple(reshape_to(ctx, piece, shape) for piece in _split(ctx, node, x, [1] * x.shape[dim], dim))


def _drop_axis(order, dim):
    kept = [a for a in order if a != dim]
    return tuple(a - (a > dim) for a in kept)


def strided_slice(ctx, x, dim, start, end, step, shrink=False):
    n = x.shape[dim]
    start = 0 if start is None else int(start)
    end = n if end is None else int(end)
    start = max(start + n, 0) if start < 0 else min(start, n)
    end = max(end + n, 0) if end < 0 else min(end, n)
    if not shrink and start == 0 and end == n and step == 1:
        return x
    if shrink and step == 1 and x.dtype != "int64":  # XNNPACK takes no shrinking STRIDED_SLICE: slice, drop the axis
        return reshape_to(ctx, strided_slice(ctx, x, dim, start, start + 1, 1),
                          tuple(s for i, s in enumerate(x.shape) if i != dim))
    phys = x.physical_shape
    p = x.order.index(dim)
    begin = np.zeros(x.rank, np.int32)
    stop = np.array(phys, np.int32)
    strides = np.ones(x.rank, np.int32)
    begin[p], stop[p], strides[p] = start, end, step
    if shrink:
        stop[p] = start + 1
        shape = tuple(s for i, s in enumerate(x.shape) if i != dim)
        out = ctx.tensor(shape, x.dtype, perm=_drop_axis(x.order, dim))
    else:
        shape = list(x.shape)
        shape[dim] = len(range(start, end, step))
        out = ctx.tensor(tuple(shape), x.dtype, perm=x.perm)
    ctx.emit("STRIDED_SLICE", [x, ctx.const(begin), ctx.const(stop), ctx.const(strides)], [out],
             BeginMask=0, EndMask=0, EllipsisMask=0, NewAxisMask=0, ShrinkAxisMask=(1 << p) if shrink else 0,
             Offset=False)
    return out


@register("aten.slice.Tensor", emits=("STRIDED_SLICE",))
def slice_(ctx, node, a):
    x = a["self"]
    return strided_slice(ctx, x, norm_dim(a["dim"], x.rank), a["start"], a["end"], int(a["step"]))


@register("aten.select.int", emits=("STRIDED_SLICE", "RESHAPE"))
def select(ctx, node, a):
    x = a["self"]
    dim = norm_dim(a["dim"], x.rank)
    index = int(a["index"])
    index = index + x.shape[dim] if index < 0 else index
    return strided_slice(ctx, x, dim, index, index + 1, 1, shrink=True)


@register("aten.index.Tensor", "aten.index_select.default", emits=("GATHER", "GATHER_ND", "CAST", "FLOOR_MOD"))
def index(ctx, node, a):
    from slimkit.converter.ops.indexing import index_tensors, wrapped

    x = a["self"]
    if "indices" in a:
        picks = [(i, v) for i, v in enumerate(a["indices"]) if v is not None]
        if len(picks) != 1 or not (isinstance(picks[0][1], torch.Tensor) or picks[0][1].rank == 1):
            return index_tensors(ctx, node, x, list(a["indices"]))
        dim, idx = picks[0]
    else:
        dim, idx = norm_dim(a["dim"], x.rank), a["index"]
    if isinstance(idx, torch.Tensor):
        if idx.dtype == torch.bool:
            idx = idx.nonzero().reshape(-1)
        idx = ctx.const(np.remainder(idx.detach().cpu().numpy(), x.shape[dim]).astype(np.int32))  # -1: the last
    else:
        idx = wrapped(ctx, idx, x.shape[dim])
    out_shape = tuple(node.meta["val"].shape)
    if len(out_shape) != x.rank:
        ctx.fail("only 1-D index tensors are supported")
    out = ctx.tensor(out_shape, x.dtype, perm=x.perm)
    ctx.emit("GATHER", [x, idx], [out], Axis=x.order.index(dim), BatchDims=0)
    return out


# pad modes written as one GATHER per padded axis: padded position (from -before) and axis length -> source position
_GATHERED = {"replicate": lambda i, n: np.clip(i, 0, n - 1), "circular": lambda i, n: np.mod(i, n)}


def _pad_by_gather(ctx, x, pads, source):
    """Replicate / circular padding: along each padded axis, a GATHER of the source positions (int8 stays int8)."""
    for axis, (before, after) in enumerate(pads):
        if not before and not after:
            continue
        n = x.shape[axis]
        index = ctx.const(source(np.arange(-int(before), n + int(after)), n).astype(np.int32))
        shape = list(x.shape)
        shape[axis] = n + int(before) + int(after)
        out = ctx.tensor(tuple(shape), x.dtype, perm=x.perm)
        ctx.emit("GATHER", [x, index], [out], Axis=x.order.index(axis), BatchDims=0)
        x = out
    return x


def _pad(ctx, x, pad, value=0.0, mode="constant"):
    pads = np.zeros((x.rank, 2), np.int32)
    for i in range(len(pad) // 2):
        pads[x.rank - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if (pads < 0).any():
        ctx.fail("negative padding (cropping) is not supported")
    if mode in _GATHERED:
        return _pad_by_gather(ctx, x, pads, _GATHERED[mode])
    physical = pads[list(x.order)]
    out = ctx.tensor(tuple(ctx.node.meta["val"].shape), x.dtype, perm=x.perm)
    if mode == "reflect":
        ctx.emit("MIRROR_PAD", [x, ctx.const(physical)], [out], Mode=0)
    elif mode != "constant":
        ctx.fail(f"pad mode {mode!r} is not supported (constant, reflect, replicate and circular are)")
    elif not value:
        ctx.emit("PAD", [x, ctx.const(physical)], [out])
    else:
        ctx.emit("PADV2", [x, ctx.const(physical), ctx.const(np.array(value, np.float32))], [out])
    return out


@register("aten.constant_pad_nd.default", emits=("PAD", "PADV2"))
def constant_pad_nd(ctx, node, a):
    return _pad(ctx, a["self"], list(a["pad"]), a["value"] or 0.0)


@register("aten.pad.default", emits=("PAD", "PADV2", "MIRROR_PAD", "GATHER"))
def pad(ctx, node, a):
    return _pad(ctx, a["self"], list(a["pad"]), a["value"] or 0.0, a["mode"])


@register("aten.replication_pad2d.default", "aten.replication_pad1d.default", emits=("GATHER",))
def replication_pad(ctx, node, a):
    return _pad(ctx, a["self"], list(a["padding"]), 0.0, "replicate")


@register("aten.reflection_pad2d.default", "aten.reflection_pad1d.default", emits=("MIRROR_PAD",))
def reflection_pad(ctx, node, a):
    return _pad(ctx, a["self"], list(a["padding"]), 0.0, "reflect")


#: most inputs of a CONCATENATION XNNPACK's delegate takes
XNNPACK_CONCAT_INPUTS = 5


@register("aten.expand.default", "aten.expand_as.default", emits=("CONCATENATION", "BROADCAST_TO"))
def expand(ctx, node, a):
    """BROADCAST_TO; one axis widened to at most XNNPACK_CONCAT_INPUTS copies (a grouped-query attention's repeat of
    keys and values) is a CONCATENATION of the input with itself instead, which XNNPACK runs (it takes no
    BROADCAST_TO)."""
    x = a["self"]
    shape = tuple(node.meta["val"].shape)
    if len(shape) != x.rank:
        x = reshape_to(ctx, x, (1,) * (len(shape) - x.rank) + tuple(x.shape))
    if shape == x.shape:
        return x
    wide = [d for d in range(x.rank) if shape[d] != x.shape[d]]
    if len(wide) == 1 and shape[wide[0]] <= XNNPACK_CONCAT_INPUTS:
        return cat_tensors(ctx, [x] * shape[wide[0]], wide[0])
    out = ctx.tensor(shape, x.dtype, perm=x.perm)
    physical = [shape[i] for i in x.order]
    ctx.emit("BROADCAST_TO", [x, ctx.const(np.array(physical, np.int32))], [out])
    return out


@register("aten.repeat.default", emits=("TILE",))
def repeat(ctx, node, a):
    x, reps = a["self"], [int(r) for r in a["repeats"]]
    if len(reps) != x.rank:
        x = reshape_to(ctx, x, (1,) * (len(reps) - x.rank) + tuple(x.shape))
    out = ctx.tensor(tuple(node.meta["val"].shape), x.dtype, perm=x.perm)
    ctx.emit("TILE", [x, ctx.const(np.array([reps[i] for i in x.order], np.int32))], [out])
    return out


@register("aten.stack.default", emits=("PACK",))
def stack(ctx, node, a):
    values = list(a["tensors"])
    rank = values[0].rank if isinstance(values[0], Tensor) else values[0].dim()
    dim = norm_dim(a["dim"], rank + 1)
    inputs = [_tensor_in(ctx, v, layout.identity(rank)) for v in values]
    out = ctx.tensor(tuple(node.meta["val"].shape), inputs[0].dtype)
    ctx.emit("PACK", inputs, [out], ValuesCount=len(inputs), Axis=dim)
    return out


@register("aten.zeros_like.default", "aten.ones_like.default", "aten.full_like.default", "aten.new_zeros.default",
          "aten.new_ones.default", "aten.new_full.default", "aten.empty_like.default", emits=())
def constant_like(ctx, node, a):
    # shapes are static: the result is a constant (evaluated by PyTorch from the recorded example value)
    val = node.meta["val"]
    target = str(node.target)
    fill = 0.0 if "zeros" in target or "empty" in target else 1.0 if "ones" in target else a["fill_value"]
    return torch.full(tuple(val.shape), fill, dtype=val.dtype)
