"""Convolutions: conv1d / conv2d (plain, depthwise, grouped) and conv_transpose2d, channels-last."""

from __future__ import annotations

import math

import numpy as np

from slimkit.converter.ir import QuantParams, Tensor
from slimkit.converter.ops.quantize import attach_weight_params
from slimkit.converter.registry import register

NHWC = (0, 2, 3, 1)


def _pair(v, n=2):
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return (int(v),) * n


def _np(ctx, value, what):
    if isinstance(value, Tensor):
        if value.is_const and value.perm is None:
            return value.values()
        ctx.fail(f"expected a constant {what}, got an activation; only parameter/constant weights are supported")
    return None if value is None else np.asarray(value.detach().cpu().numpy(), dtype=np.float32)


def padding_mode(in_hw, out_hw, kernel, stride, dilation, pads):
    """'VALID', 'SAME', or None when an explicit PAD is needed."""
    if all(p == 0 for p in pads):
        return "VALID"
    for i, o, k, s, d, p in zip(in_hw, out_hw, kernel, stride, dilation, pads):
        dk = (k - 1) * d + 1
        total = max((o - 1) * s + dk - i, 0)
        if o != math.ceil(i / s) or p != total // 2:
            return None
    return "SAME"


def pad_spatial(ctx, x: Tensor, pads, value=0.0) -> Tensor:
    """Zero- (or ``value``-) pad the H, W axes of an NHWC tensor by ``pads`` = ((t, b), (l, r))."""
    (t, b), (left, r) = pads
    shape = list(x.shape)
    shape[2] += t + b
    shape[3] += left + r
    out = ctx.tensor(tuple(shape), perm=NHWC, name=ctx.node.name + "_pad")
    paddings = ctx.const(np.array([[0, 0], [t, b], [left, r], [0, 0]], np.int32))
    if value == 0.0:
        ctx.emit("PAD", [x, paddings], [out])
    else:
        ctx.emit("PADV2", [x, paddings, ctx.const(np.array(value, np.float32))], [out])
    return out


def conv2d_nhwc(ctx, x: Tensor, weight: np.ndarray, bias, stride, padding, dilation, groups, out_shape):
    """Emit a 2-D convolution of NHWC ``x``; returns an NHWC tensor of logical ``out_shape``."""
    x = ctx.layout(x, NHWC)
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    if isinstance(padding, str):
        mode = padding.upper()
        pads = (0, 0)
    else:
        pads = _pair(padding)
        mode = padding_mode((h, w), out_shape[2:], (kh, kw), stride, dilation, pads) if ctx.options.optimize else None
        if mode is None:
            x = pad_spatial(ctx, x, ((pads[0], pads[0]), (pads[1], pads[1])))
            mode = "VALID"
    padding_code = 0 if mode == "SAME" else 1
    bias = np.zeros(cout, np.float32) if bias is None else bias
    out = ctx.tensor(out_shape, perm=NHWC)
    common = dict(Padding=padding_code, StrideH=stride[0], StrideW=stride[1],
                  DilationHFactor=dilation[0], DilationWFactor=dilation[1], FusedActivationFunction=0)
    if groups == 1:
        wt = ctx.const(weight.transpose(0, 2, 3, 1), name=ctx.node.name + "_weight")
        ctx.emit("CONV_2D", [x, wt, ctx.const(bias, name=ctx.node.name + "_bias")], [out], **common)
    elif groups == cin and cout % cin == 0:
        wt = ctx.const(weight.transpose(1, 2, 3, 0), name=ctx.node.name + "_weight")
        ctx.emit("DEPTHWISE_CONV_2D", [x, wt, ctx.const(bias, name=ctx.node.name + "_bias")], [out],
                      DepthMultiplier=cout // cin, **common)
    elif ctx.options.group_conv_rewrite:
        return _group_rewrite(ctx, x, weight, bias, groups, out, common)
    else:
        wt = ctx.const(weight.transpose(0, 2, 3, 1), name=ctx.node.name + "_weight")
        ctx.emit("CONV_2D", [x, wt, ctx.const(bias, name=ctx.node.name + "_bias")], [out], **common)
    return out


def _group_rewrite(ctx, x, weight, bias, groups, out, common):
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    parts = [ctx.tensor((n, cin // groups, h, w), perm=NHWC, name=f"{ctx.node.name}_g{g}") for g in range(groups)]
    ctx.emit("SPLIT", [ctx.const(np.array(3, np.int32)), x], parts, NumSplits=groups)
    outs = []
    step = cout // groups
    for g, part in enumerate(parts):
        o = ctx.tensor((out.shape[0], step, *out.shape[2:]), perm=NHWC, name=f"{ctx.node.name}_go{g}")
        wt = ctx.const(weight[g * step:(g + 1) * step].transpose(0, 2, 3, 1))
        ctx.emit("CONV_2D", [part, wt, ctx.const(bias[g * step:(g + 1) * step])], [o], **common)
        outs.append(o)
    ctx.emit("CONCATENATION", outs, [out], Axis=3, FusedActivationFunction=0)
    return out


@register("aten.conv2d.default", "aten.conv2d.padding", emits=("CONV_2D", "DEPTHWISE_CONV_2D", "PAD"))
def conv2d(ctx, node, a):
    weight = _np(ctx, a["weight"], "weight")
    bias = _np(ctx, a["bias"], "bias")
    out_shape = tuple(node.meta["val"].shape)
    out = conv2d_nhwc(ctx, a["input"], weight, bias, _pair(a["stride"]), a["padding"] if isinstance(
        a["padding"], str) else _pair(a["padding"]), _pair(a["dilation"]), int(a["groups"]), out_shape)
    attach_weight_params(ctx, a["weight"], out)
    return out


@register("aten.conv1d.default", "aten.conv1d.padding", emits=("CONV_2D", "DEPTHWISE_CONV_2D", "PAD", "RESHAPE"))
def conv1d(ctx, node, a):
    x = ctx.layout(a["input"], (0, 2, 1))
    n, c, length = x.shape
    x4 = ctx.tensor((n, c, 1, length), perm=NHWC)
    ctx.emit("RESHAPE", [x, ctx.const(np.array([n, 1, length, c], np.int32))], [x4], NewShape=[n, 1, length, c])
    weight = _np(ctx, a["weight"], "weight")[:, :, None, :]
    bias = _np(ctx, a["bias"], "bias")
    out = tuple(node.meta["val"].shape)
    padding = a["padding"] if isinstance(a["padding"], str) else (0, _pair(a["padding"], 1)[0])
    y4 = conv2d_nhwc(ctx, x4, weight, bias, (1, _pair(a["stride"], 1)[0]), padding,
                     (1, _pair(a["dilation"], 1)[0]), int(a["groups"]), (out[0], out[1], 1, out[2]))
    attach_weight_params(ctx, a["weight"], y4)
    y = ctx.tensor(out, perm=(0, 2, 1))
    ctx.emit("RESHAPE", [y4, ctx.const(np.array([out[0], out[2], out[1]], np.int32))], [y],
             NewShape=[out[0], out[2], out[1]]).see_through = True
    return y


@register("aten.conv_transpose2d.input", emits=("TRANSPOSE_CONV", "SLICE", "SPLIT", "CONCATENATION"))
def conv_transpose2d(ctx, node, a):
    x = ctx.layout(a["input"], NHWC)
    weight = _np(ctx, a["weight"], "weight")  # (in, out/groups, kh, kw)
    bias = _np(ctx, a["bias"], "bias")
    if _pair(a["dilation"]) != (1, 1):
        ctx.fail("dilated transposed convolution is not supported")
    groups = int(a["groups"])
    stride, pads, opad = _pair(a["stride"]), _pair(a["padding"]), _pair(a["output_padding"])
    out_shape = tuple(node.meta["val"].shape)
    if groups == 1:
        return _transpose_conv(ctx, node, x, weight, bias, stride, pads, opad, out_shape,
                               ctx.weight_quant.get(id(a["weight"])))
    # one TRANSPOSE_CONV per group on its slice of the channels, concatenated
    n, cin, h, w = x.shape
    parts = [ctx.tensor((n, cin // groups, h, w), perm=NHWC, name=f"{node.name}_g{g}") for g in range(groups)]
    ctx.emit("SPLIT", [ctx.const(np.array(3, np.int32)), x], parts, NumSplits=groups)
    step_in, step_out = cin // groups, out_shape[1] // groups
    outs = [_transpose_conv(ctx, node, part, weight[g * step_in:(g + 1) * step_in],
                            None if bias is None else bias[g * step_out:(g + 1) * step_out], stride, pads, opad,
                            (out_shape[0], step_out) + out_shape[2:]) for g, part in enumerate(parts)]
    out = ctx.tensor(out_shape, perm=NHWC)
    ctx.emit("CONCATENATION", outs, [out], Axis=3, FusedActivationFunction=0)
    return out


def _transpose_conv(ctx, node, x, weight, bias, stride, pads, opad, out_shape, params=None):
    """One ungrouped TRANSPOSE_CONV of NHWC ``x`` (plus a SLICE for PyTorch's padding); ``params``: the weight's
    recorded fake-quant parameters (per output channel: axis 1 of PyTorch's ``(in, out, kh, kw)``), kept for the int8
    kernel."""
    n, cin, h, w = x.shape
    cout, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    same = all(o == i * s and p == (k - s) // 2 and k >= s
               for o, i, s, p, k in zip(out_shape[2:], (h, w), stride, pads, (kh, kw)))
    full = out_shape if same else (n, cout, (h - 1) * stride[0] + kh, (w - 1) * stride[1] + kw)
    if not same and any(op > p for op, p in zip(opad, pads)):
        ctx.fail("output_padding larger than padding is not supported")
    y = ctx.tensor(full, perm=NHWC)
    wt = ctx.const(weight.transpose(1, 2, 3, 0), name=node.name + "_weight")
    if params is not None and (params.scale.size == 1 or params.quantized_dimension == 1):
        wt.quant_hint = QuantParams(params.scale, params.zero_point, 0)
    b = ctx.const(np.zeros(cout, np.float32) if bias is None else bias, name=node.name + "_bias")
    oshape = ctx.const(np.array([n, full[2], full[3], cout], np.int32))
    ctx.emit("TRANSPOSE_CONV", [oshape, wt, x, b], [y], Padding=0 if same else 1, StrideH=stride[0],
             StrideW=stride[1], FusedActivationFunction=0)
    if same:
        return y
    out = ctx.tensor(out_shape, perm=NHWC)
    begin = np.array([0, pads[0], pads[1], 0], np.int32)
    size = np.array([n, out_shape[2], out_shape[3], cout], np.int32)
    # an activation after the crop fuses into the TRANSPOSE_CONV (elementwise: the same values either side of it)
    ctx.emit("SLICE", [y, ctx.const(begin), ctx.const(size)], [out]).see_through = True
    return out
