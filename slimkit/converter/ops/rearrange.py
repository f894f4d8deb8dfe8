"""Ops that move elements without arithmetic: pixel_shuffle / pixel_unshuffle (RESHAPE + TRANSPOSE),
repeat_interleave, broadcast_tensors, im2col / col2im (Unfold / Fold: one GATHER_ND / SCATTER_ND with
constant coordinates)."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter import layout
from slimkit.converter.ops.common import norm_dim
from slimkit.converter.ops.indexing import broadcast_to
from slimkit.converter.ops.shape import relabel, reshape_to, strided_slice
from slimkit.converter.registry import register


@register("aten.pixel_shuffle.default", emits=("RESHAPE", "TRANSPOSE"))
def pixel_shuffle(ctx, node, a):
    x, r = a["self"], int(a["upscale_factor"])
    n, c, h, w = x.shape[0], x.shape[-3] // (r * r), x.shape[-2], x.shape[-1]
    split = reshape_to(ctx, x, (n, c, r, r, h, w))
    moved = relabel(split, [0, 1, 4, 2, 5, 3])  # (n, c, h, r, w, r)
    return reshape_to(ctx, moved, tuple(node.meta["val"].shape))


@register("aten.pixel_unshuffle.default", emits=("RESHAPE", "TRANSPOSE"))
def pixel_unshuffle(ctx, node, a):
    x, r = a["self"], int(a["downscale_factor"])
    n, c, h, w = x.shape[0], x.shape[-3], x.shape[-2] // r, x.shape[-1] // r
    split = reshape_to(ctx, x, (n, c, h, r, w, r))
    moved = relabel(split, [0, 1, 3, 5, 2, 4])  # (n, c, r, r, h, w)
    return reshape_to(ctx, moved, tuple(node.meta["val"].shape))


@register("aten.repeat_interleave.self_int", emits=("RESHAPE", "BROADCAST_TO"))
def repeat_interleave(ctx, node, a):
    x, repeats = a["self"], int(a["repeats"])
    if a["dim"] is None:
        x, dim = reshape_to(ctx, x, (int(np.prod(x.shape)),)), 0
    else:
        dim = norm_dim(a["dim"], x.rank)
    spread = reshape_to(ctx, x, x.shape[:dim + 1] + (1,) + x.shape[dim + 1:])
    tiled = broadcast_to(ctx, spread, x.shape[:dim + 1] + (repeats,) + x.shape[dim + 1:])
    return reshape_to(ctx, tiled, tuple(node.meta["val"].shape))


@register("aten.repeat_interleave.self_Tensor", emits=("GATHER",))
def repeat_interleave_tensor(ctx, node, a):
    x, repeats = a["self"], a["repeats"]
    if not isinstance(repeats, torch.Tensor):
        ctx.fail("repeat counts computed from the inputs give a data-dependent shape; pass constant repeats")
    if a["dim"] is None:
        x, dim = reshape_to(ctx, x, (int(np.prod(x.shape)),)), 0
    else:
        dim = norm_dim(a["dim"], x.rank)
    counts = np.broadcast_to(repeats.detach().cpu().numpy(), (x.shape[dim],))
    index = np.repeat(np.arange(x.shape[dim]), counts).astype(np.int32)
    out = ctx.tensor(tuple(index.size if i == dim else s for i, s in enumerate(x.shape)), x.dtype, perm=x.perm)
    ctx.emit("GATHER", [x, ctx.const(index)], [out], Axis=x.order.index(dim), BatchDims=0)
    return out


@register("aten.sym_size.int", emits=())
def sym_size(ctx, node, a):
    """A shape read in a graph with a data-dependent size (repeat_interleave): the size the file holds."""
    return int(a["self"].shape[norm_dim(a["dim"], a["self"].rank)])


@register("aten.broadcast_tensors.default", emits=("BROADCAST_TO",))
def broadcast_tensors(ctx, node, a):
    return tuple(broadcast_to(ctx, ctx.as_tensor(t), v.shape) for t, v in zip(a["tensors"], node.meta["val"]))


def _blocks(size, kernel, dilation, padding, stride):
    """Per spatial axis: (number of block positions, padded size)."""
    return [((s + 2 * p - d * (k - 1) - 1) // st + 1, s + 2 * p)
            for s, k, d, p, st in zip(size, kernel, dilation, padding, stride)]


def _patch_coords(n, c, size, kernel, dilation, padding, stride):
    """Coordinates ``[n, c*kh*kw, L, 4]`` into the padded (N, C, H, W) image of every im2col element."""
    (oh, _), (ow, _) = _blocks(size, kernel, dilation, padding, stride)
    kh, kw = kernel
    b, ch, ki, kj, oy, ox = np.meshgrid(np.arange(n), np.arange(c), np.arange(kh), np.arange(kw), np.arange(oh),
                                        np.arange(ow), indexing="ij")
    y = oy * stride[0] + ki * dilation[0]
    x = ox * stride[1] + kj * dilation[1]
    coords = np.stack([b, ch, y, x], -1).astype(np.int32)
    return coords.reshape(n, c * kh * kw, oh * ow, 4)


def _ints(v):
    return [int(i) for i in v]


@register("aten.im2col.default", emits=("PAD", "GATHER_ND"))
def im2col(ctx, node, a):
    x = ctx.layout(a["self"], layout.identity(a["self"].rank))
    if x.rank != 4:
        ctx.fail("Unfold of an unbatched (3-D) input is not supported")
    kernel, dilation, padding, stride = (_ints(a[k]) for k in ("kernel_size", "dilation", "padding", "stride"))
    n, c, h, w = x.shape
    if any(padding):
        padded = ctx.tensor((n, c, h + 2 * padding[0], w + 2 * padding[1]), x.dtype)
        pads = np.array([[0, 0], [0, 0], [padding[0]] * 2, [padding[1]] * 2], np.int32)
        ctx.emit("PAD", [x, ctx.const(pads)], [padded])
        x = padded
    coords = ctx.const(_patch_coords(n, c, (h, w), kernel, dilation, padding, stride))
    out = ctx.tensor(tuple(node.meta["val"].shape), x.dtype)
    ctx.emit("GATHER_ND", [x, coords], [out])
    return out


@register("aten.col2im.default", emits=("SCATTER_ND", "STRIDED_SLICE"))
def col2im(ctx, node, a):
    x = ctx.layout(a["self"], layout.identity(a["self"].rank))
    if x.rank != 3:
        ctx.fail("Fold of an unbatched (2-D) input is not supported")
    size, kernel, dilation, padding, stride = (_ints(a[k]) for k in ("output_size", "kernel_size", "dilation",
                                                                     "padding", "stride"))
    n, ckk, _ = x.shape
    c = ckk // (kernel[0] * kernel[1])
    (_, ph), (_, pw) = _blocks(size, kernel, dilation, padding, stride)
    coords = ctx.const(_patch_coords(n, c, size, kernel, dilation, padding, stride))
    full = ctx.tensor((n, c, ph, pw), x.dtype)
    # SCATTER_ND adds the values written to one element: the overlapping blocks' sum
    ctx.emit("SCATTER_ND", [coords, x, ctx.const(np.array([n, c, ph, pw], np.int32))], [full])
    out = strided_slice(ctx, full, 2, padding[0], padding[0] + size[0], 1)
    return strided_slice(ctx, out, 3, padding[1], padding[1] + size[1], 1)
