"""3-D convolutions: conv3d (CONV_3D) and conv_transpose3d (CONV_3D_TRANSPOSE), channels-last (NDHWC)."""

from __future__ import annotations

import numpy as np

from slimkit.converter.ops.conv import _np, _pair
from slimkit.converter.registry import register

NDHWC = (0, 2, 3, 4, 1)


def _options(stride, dilation):
    return dict(Padding=1, StrideD=stride[0], StrideH=stride[1], StrideW=stride[2], DilationDFactor=dilation[0],
                DilationHFactor=dilation[1], DilationWFactor=dilation[2], FusedActivationFunction=0)


def _bias(ctx, node, bias, channels):
    return ctx.const(np.zeros(channels, np.float32) if bias is None else bias, name=node.name + "_bias")


@register("aten.conv3d.default", "aten.conv3d.padding", emits=("CONV_3D", "PAD"))
def conv3d(ctx, node, a):
    x = ctx.layout(a["input"], NDHWC)
    weight, bias = _np(ctx, a["weight"], "weight"), _np(ctx, a["bias"], "bias")  # (out, in, kd, kh, kw)
    if int(a["groups"]) != 1:
        ctx.fail("grouped 3-D convolution is not supported (CONV_3D has no groups)")
    dilation = _pair(a["dilation"], 3)
    if a["padding"] == "same":  # as PyTorch: the odd pixel of an even total padding goes to the end
        pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for d, k in zip(dilation, weight.shape[2:])]
    else:
        pads = [(p, p) for p in ((0, 0, 0) if a["padding"] == "valid" else _pair(a["padding"], 3))]
    if any(p for pair in pads for p in pair):
        shape = x.shape[:2] + tuple(s + lo + hi for s, (lo, hi) in zip(x.shape[2:], pads))
        padded = ctx.tensor(shape, x.dtype, perm=NDHWC)
        ctx.emit("PAD", [x, ctx.const(np.array([[0, 0], *pads, [0, 0]], np.int32))], [padded])
        x = padded
    out = ctx.tensor(tuple(node.meta["val"].shape), perm=NDHWC)
    wt = ctx.const(weight.transpose(2, 3, 4, 1, 0), name=node.name + "_weight")  # DHWIO
    ctx.emit("CONV_3D", [x, wt, _bias(ctx, node, bias, weight.shape[0])], [out],
             **_options(_pair(a["stride"], 3), dilation))
    return out


@register("aten.conv_transpose3d.input", emits=("CONV_3D_TRANSPOSE", "SLICE"))
def conv_transpose3d(ctx, node, a):
    x = ctx.layout(a["input"], NDHWC)
    weight, bias = _np(ctx, a["weight"], "weight"), _np(ctx, a["bias"], "bias")  # (in, out, kd, kh, kw)
    if int(a["groups"]) != 1:
        ctx.fail("grouped 3-D transposed convolution is not supported")
    stride, pads, opad, dil = (_pair(a[k], 3) for k in ("stride", "padding", "output_padding", "dilation"))
    if any(o > p for o, p in zip(opad, pads)):
        ctx.fail("output_padding larger than padding is not supported")
    n = x.shape[0]
    cout = weight.shape[1]
    kernel = weight.shape[2:]
    full = tuple((i - 1) * s + d * (k - 1) + 1 for i, s, d, k in zip(x.shape[2:], stride, dil, kernel))
    y = ctx.tensor((n, cout) + full, perm=NDHWC)
    wt = ctx.const(weight.transpose(2, 3, 4, 1, 0), name=node.name + "_weight")  # DHWOI
    ctx.emit("CONV_3D_TRANSPOSE", [ctx.const(np.array((n,) + full + (cout,), np.int32)), wt, x,
                                   _bias(ctx, node, bias, cout)], [y], **_options(stride, dil))
    out_shape = tuple(node.meta["val"].shape)
    if out_shape == y.shape:
        return y
    out = ctx.tensor(out_shape, perm=NDHWC)
    begin = np.array([0, *pads, 0], np.int32)
    ctx.emit("SLICE", [y, ctx.const(begin), ctx.const(np.array([n, *out_shape[2:], cout], np.int32))], [out])
    return out
