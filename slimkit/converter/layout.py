"""Layout propagation: NCHW -> NHWC without transposes to cancel afterwards.

Every tensor records the order its logical axes are stored in. Ops that need channels-last
(convolutions, pooling, resize) ask for it; layout-agnostic ops (elementwise, activations,
concat, reductions, softmax, slicing) work in whatever order their input has, translating their
axis arguments; ``permute`` / ``transpose`` only relabel the order. A TRANSPOSE is emitted only
where an op needs an order its input does not have (for instance ``view`` after a real permute),
and at most once per tensor and order. In an ordinary CNN none is left.

Example:

>>> from slimkit.converter.layout import channels_last_order, physical_axis
>>> channels_last_order(4)
(0, 2, 3, 1)
>>> physical_axis((0, 2, 3, 1), 1)
3
"""

from __future__ import annotations

import numpy as np


def channels_last_order(rank: int) -> tuple[int, ...] | None:
    if rank < 3:
        return None
    return (0, *range(2, rank), 1)


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def physical_axis(order, logical_dim: int) -> int:
    return tuple(order).index(logical_dim)


def to_order(ctx, t, order):
    order = tuple(order) if order is not None else identity(t.rank)
    if t.order == order:
        return t
    if t.is_const:
        # constants are re-laid out in numpy, never with an op
        logical = np.transpose(t.values(), np.argsort(t.order))
        out = ctx.const(np.transpose(logical, order), name=t.name)
        out.shape = t.shape
        out.perm = order if order != identity(t.rank) else None
        return out
    key = (id(t), order)
    cached = ctx._transposes.get(key)
    if cached is not None:
        return cached
    if memory_compatible(t.shape, t.order, order):
        out = ctx.tensor(t.shape, t.dtype, perm=order, name=t.name + "_r")
        ctx.emit("RESHAPE", [t, ctx.const(np.array([t.shape[a] for a in order], np.int32))], [out],
                 NewShape=[t.shape[a] for a in order])
    else:
        out = ctx.tensor(t.shape, t.dtype, perm=order, name=t.name + "_t")
        perm = np.array([t.order.index(a) for a in order], np.int32)
        ctx.emit("TRANSPOSE", [t, ctx.const(perm)], [out])
    ctx._transposes[key] = out
    return out


def memory_compatible(shape, order_a, order_b) -> bool:
    """True when storing ``shape`` in ``order_a`` or ``order_b`` gives the same bytes (size-1 axes move freely)."""
    a = [x for x in order_a if shape[x] != 1]
    b = [x for x in order_b if shape[x] != 1]
    return a == b


def logical_bytes(ctx, t):
    """``t`` in an order whose memory equals the logical (row-major) order: for reshape / flatten."""
    if t.perm is None or memory_compatible(t.shape, t.order, identity(t.rank)):
        return t
    return to_order(ctx, t, identity(t.rank))


def const_in_order(array: np.ndarray, rank: int, order) -> np.ndarray:
    """A logically-broadcastable constant laid out to broadcast against a rank-``rank`` tensor in ``order``."""
    array = np.asarray(array)
    if array.ndim < rank:
        array = array.reshape((1,) * (rank - array.ndim) + array.shape)
    array = np.transpose(array, order)
    # leading singleton axes are implied by broadcasting
    while array.ndim > 1 and array.shape[0] == 1:
        array = array[0]
    return array


def reshape_groups(in_shape, out_shape):
    """Pair the non-singleton axes of two shapes of equal size into (input axes, output axes) groups
    whose sizes match (a reshape only merges or splits inside a group); None if sizes disagree."""
    ins = [i for i, d in enumerate(in_shape) if d != 1]
    outs = [j for j, d in enumerate(out_shape) if d != 1]
    groups, i, j = [], 0, 0
    try:
        while i < len(ins) or j < len(outs):
            gi, gj = [ins[i]], [outs[j]]
            pi, pj = in_shape[ins[i]], out_shape[outs[j]]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj:
                    gi.append(ins[i])
                    pi *= in_shape[ins[i]]
                    i += 1
                else:
                    gj.append(outs[j])
                    pj *= out_shape[outs[j]]
                    j += 1
            groups.append((gi, gj))
    except IndexError:
        return None
    return groups


def reshape_orders(shape, order, out_shape):
    """(input order, output order) for reshaping ``shape`` stored in ``order`` to ``out_shape`` without
    moving data when the groups are contiguous in memory; otherwise the nearest input order that makes
    them so (a TRANSPOSE to it is needed). None when no grouping exists."""
    groups = reshape_groups(shape, out_shape)
    if groups is None:
        return None
    rank = {a: k for k, a in enumerate(a for a in order if shape[a] != 1)}
    groups.sort(key=lambda g: min(rank[a] for a in g[0]))
    in_order = [a for gi, _ in groups for a in sorted(gi)] + [a for a in range(len(shape)) if shape[a] == 1]
    out_order = [b for _, gj in groups for b in sorted(gj)]
    if out_order == sorted(out_order):  # size-1 axes can sit anywhere: keep the output in its own order
        return tuple(in_order), identity(len(out_shape))
    out_order += [b for b in range(len(out_shape)) if out_shape[b] == 1]
    return tuple(in_order), tuple(out_order)
