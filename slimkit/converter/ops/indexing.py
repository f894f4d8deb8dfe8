"""Indexing with index tensors: gather / scatter along a dim, advanced indexing with several index tensors,
index_put, copy_. Every case builds one int32 coordinate tensor (``[..., k]``) for GATHER_ND / SCATTER_ND;
negative indices are wrapped (FLOOR_MOD for index activations) as PyTorch does."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter import layout
from slimkit.converter.ir import Tensor
from slimkit.converter.ops.common import norm_dim
from slimkit.converter.ops.dtypes import cast, out_dtype
from slimkit.converter.ops.elementwise import binary
from slimkit.converter.ops.shape import relabel, reshape_to, strided_slice
from slimkit.converter.registry import register


def _array(v):
    """The values of a constant index (torch tensor or constant IR tensor), else None."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    if isinstance(v, Tensor) and v.is_const:
        return np.transpose(v.values(), np.argsort(v.order))
    if isinstance(v, np.ndarray):
        return v
    return None


def _shape(v):
    return tuple(v.shape)


def broadcast_to(ctx, x: Tensor, shape) -> Tensor:
    """``x`` broadcast to ``shape`` (identity layout)."""
    shape = tuple(int(s) for s in shape)
    x = ctx.layout(x, layout.identity(x.rank))
    if x.rank < len(shape):
        x = reshape_to(ctx, x, (1,) * (len(shape) - x.rank) + x.shape)
    if x.shape == shape:
        return x
    out = ctx.tensor(shape, x.dtype)
    ctx.emit("BROADCAST_TO", [x, ctx.const(np.array(shape, np.int32))], [out])
    return out


def wrapped(ctx, index: Tensor, size: int) -> Tensor:
    """An index activation as int32 in ``[0, size)``: negative entries count from the end, as in PyTorch."""
    index = cast(ctx, ctx.layout(index, layout.identity(index.rank)), "int32")
    return binary(ctx, "FLOOR_MOD", index, size)


def coordinates(ctx, indices, sizes) -> Tensor:
    """int32 coordinates ``[*broadcast shape, len(indices)]`` of index tensors into axes of ``sizes``."""
    bshape = tuple(np.broadcast_shapes(*(_shape(v) for v in indices)))
    arrays = [_array(v) for v in indices]
    if all(a is not None for a in arrays):
        arrays = [np.broadcast_to(np.where(a < 0, a + n, a), bshape) for a, n in zip(arrays, sizes)]
        return ctx.const(np.stack(arrays, -1).astype(np.int32))
    parts = []
    for v, a, n in zip(indices, arrays, sizes):
        if a is not None:
            part = ctx.const(np.broadcast_to(np.where(a < 0, a + n, a), bshape)[..., None].astype(np.int32))
        else:
            part = reshape_to(ctx, broadcast_to(ctx, wrapped(ctx, v, n), bshape), bshape + (1,))
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    out = ctx.tensor(bshape + (len(parts),), "int32")
    ctx.emit("CONCATENATION", parts, [out], Axis=len(bshape), FusedActivationFunction=0)
    return out


def _along(index, dim, rank):
    """Index tensors that pick ``index`` along ``dim`` and the element's own position along every other axis."""
    grids = np.indices(_shape(index))
    return [index if d == dim else grids[d] for d in range(rank)]


def gather_nd(ctx, x: Tensor, coords: Tensor, shape) -> Tensor:
    """GATHER_ND over ``x``'s leading axes (identity layout); the result has logical ``shape``."""
    x = ctx.layout(x, layout.identity(x.rank))
    out = ctx.tensor(tuple(shape), x.dtype)
    ctx.emit("GATHER_ND", [x, coords], [out])
    return out


def scatter_merge(ctx, base, coords: Tensor, updates: Tensor, accumulate: bool, dtype: str) -> Tensor:
    """``base`` with the elements at ``coords`` replaced by (``accumulate``: increased by) ``updates``."""
    base = cast(ctx, ctx.as_tensor(base), dtype)
    base = ctx.layout(base, layout.identity(base.rank))
    updates = cast(ctx, ctx.layout(updates, layout.identity(updates.rank)), dtype)
    shape = ctx.const(np.array(base.shape, np.int32))
    scattered = ctx.tensor(base.shape, dtype)
    ctx.emit("SCATTER_ND", [coords, updates, shape], [scattered])
    if accumulate:
        return binary(ctx, "ADD", base, scattered, FusedActivationFunction=0)
    count = ctx.tensor(base.shape, "float32")
    ctx.emit("SCATTER_ND", [coords, ctx.const(np.ones(updates.shape, np.float32)), shape], [count])
    mask = binary(ctx, "GREATER", count, 0.0)
    mask.dtype = "bool"
    out = ctx.tensor(base.shape, dtype)
    ctx.emit("SELECT_V2", [mask, scattered, base], [out])
    return out


def _unique(ctx, coords: Tensor):
    """Refuse constant coordinates that write one element twice (PyTorch leaves the result undefined there)."""
    if coords.is_const:
        flat = coords.data.reshape(-1, coords.shape[-1])
        if len(np.unique(flat, axis=0)) != len(flat):
            ctx.fail("the indices write the same element more than once (undefined in PyTorch)")


@register("aten.gather.default", emits=("GATHER_ND", "CONCATENATION", "FLOOR_MOD", "CAST"))
def gather(ctx, node, a):
    x, index = ctx.as_tensor(a["self"]), a["index"]
    dim = norm_dim(a["dim"], x.rank)
    return gather_nd(ctx, x, coordinates(ctx, _along(index, dim, x.rank), x.shape), _shape(index))


def _updates(ctx, node, a, shape):
    """The scattered values: ``src`` cut to the index's shape, or the scalar ``value`` filled to it."""
    if a.get("src") is None:
        return ctx.const(np.full(shape, a["value"], np.float32))
    src = ctx.as_tensor(a["src"])
    for d, n in enumerate(shape):
        src = strided_slice(ctx, src, d, 0, n, 1)
    return src


@register("aten.scatter.src", "aten.scatter.value", "aten.scatter_.src", "aten.scatter_.value",
          "aten.scatter_add.default", "aten.scatter_add_.default", emits=("SCATTER_ND", "SELECT_V2", "ADD"))
def scatter(ctx, node, a):
    if a.get("reduce") is not None:
        ctx.fail(f"scatter with reduce={a['reduce']!r} is not supported (scatter_add is)")
    base, index = ctx.as_tensor(a["self"]), a["index"]
    dim = norm_dim(a["dim"], base.rank)
    coords = coordinates(ctx, _along(index, dim, base.rank), base.shape)
    accumulate = "scatter_add" in str(node.target)
    if not accumulate:
        _unique(ctx, coords)
    updates = _updates(ctx, node, a, _shape(index))
    return scatter_merge(ctx, base, coords, updates, accumulate, out_dtype(node))


@register("aten.index_put.default", "aten.index_put_.default", emits=("SCATTER_ND", "SELECT_V2", "ADD",
                                                                      "BROADCAST_TO"))
def index_put(ctx, node, a):
    base = ctx.as_tensor(a["self"])
    indices = list(a["indices"])
    if any(v is None for v in indices):
        ctx.fail("index_put with a full slice (None) before an index tensor is not supported")
    indices = [v.nonzero().unbind(1) if isinstance(v, torch.Tensor) and v.dtype == torch.bool else (v,)
               for v in indices]
    indices = [t for group in indices for t in group]
    k = len(indices)
    coords = coordinates(ctx, indices, base.shape[:k])
    if not a["accumulate"]:
        _unique(ctx, coords)
    shape = coords.shape[:-1] + base.shape[k:]
    values = cast(ctx, ctx.as_tensor(a["values"]), out_dtype(node))
    updates = ctx.const(np.broadcast_to(values.values(), shape)) if values.is_const else \
        broadcast_to(ctx, values, shape)
    return scatter_merge(ctx, base, coords, updates, bool(a["accumulate"]), out_dtype(node))


def index_tensors(ctx, node, x: Tensor, indices) -> Tensor:
    """``x[indices]`` for several index tensors on consecutive axes (advanced indexing)."""
    picks = [i for i, v in enumerate(indices) if v is not None]
    first, k = picks[0], len(picks)
    if picks != list(range(first, first + k)):
        ctx.fail("index tensors separated by a full slice are not supported")
    coords = coordinates(ctx, [indices[i] for i in picks], x.shape[first:first + k])
    # the indexed axes first: GATHER_ND indexes leading axes
    moved = relabel(x, list(range(first, first + k)) + list(range(first)) + list(range(first + k, x.rank)))
    bshape = coords.shape[:-1]
    rest = moved.shape[k:]
    out = gather_nd(ctx, moved, coords, bshape + rest)
    # logical result: x's leading axes, the broadcast index axes, x's trailing axes
    nb = len(bshape)
    order = list(range(first, first + nb)) + list(range(first)) + list(range(first + nb, len(bshape) + len(rest)))
    return relabel(out, [order.index(i) for i in range(len(order))])


@register("aten.copy.default", "aten.copy_.default", emits=("BROADCAST_TO", "CAST"))
def copy(ctx, node, a):
    src = cast(ctx, ctx.as_tensor(a["src"]), out_dtype(node))
    shape = tuple(node.meta["val"].shape)
    if src.is_const:
        return ctx.const(np.broadcast_to(np.transpose(src.values(), np.argsort(src.order)), shape))
    return src if src.shape == shape else broadcast_to(ctx, src, shape)
