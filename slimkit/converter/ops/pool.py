"""Pooling: max / avg pool 1d / 2d (SAME detected, PAD otherwise; PyTorch's average divisors kept exactly),
adaptive average and max pooling."""

from __future__ import annotations

import numpy as np

from slimkit.converter.ops.conv import NHWC, _pair, pad_spatial, padding_mode
from slimkit.converter.ops.elementwise import binary
from slimkit.converter.ops.linear import fully_connected
from slimkit.converter.ops.reduce import reduce
from slimkit.converter.ops.shape import reshape_to
from slimkit.converter.registry import register

_LOWEST = float(np.finfo(np.float32).min)


def _pool(ctx, code, x, kernel, stride, pads, out_shape, pad_value, same_ok=True):
    x = ctx.layout(x, NHWC)
    h, w = x.shape[2:]
    mode = padding_mode((h, w), out_shape[2:], kernel, stride, (1, 1), pads) if ctx.options.optimize else None
    if mode == "VALID" and any((o - 1) * s + k > i for o, s, k, i in zip(out_shape[2:], stride, kernel, (h, w))):
        mode = None  # ceil_mode windows past the end
    if mode == "SAME" and not same_ok:
        mode = None  # TFLite's SAME average excludes the padding; count_include_pad counts it
    if mode is None:
        ends = [max((o - 1) * s + k - i - p, 0) for o, s, k, i, p in zip(out_shape[2:], stride, kernel, (h, w), pads)]
        x = pad_spatial(ctx, x, ((pads[0], ends[0]), (pads[1], ends[1])), pad_value)
        mode = "VALID"
    out = ctx.tensor(out_shape, perm=NHWC)
    ctx.emit(code, [x], [out], Padding=0 if mode == "SAME" else 1, StrideH=stride[0], StrideW=stride[1],
             FilterHeight=kernel[0], FilterWidth=kernel[1], FusedActivationFunction=0)
    return out


def _divisors(size, out, k, s, p, include_pad):
    """PyTorch's divisor of each average along one axis: the window clipped to the padded input (ceil_mode
    windows end there), or to the input itself without ``count_include_pad``."""
    starts = np.arange(out) * s - p
    ends = np.minimum(starts + k, size + p)
    return ends - starts if include_pad else np.minimum(ends, size) - np.maximum(starts, 0)


def _average(ctx, x, kernel, stride, pads, out_shape, include_pad):
    """AVERAGE_POOL_2D with PyTorch's divisors: LiteRT divides VALID windows by the kernel area (and SAME ones by
    the count of real elements), so positions whose PyTorch divisor differs (ceil_mode overhang,
    count_include_pad=False) are rescaled by a constant map."""
    x = ctx.layout(x, NHWC)
    size = x.shape[2:]
    # no window reaches past the padded input: a larger kernel (EfficientNet pools with one) is cut to it
    kernel = tuple(min(k, i + 2 * p) for k, i, p in zip(kernel, size, pads))
    y = _pool(ctx, "AVERAGE_POOL_2D", x, kernel, stride, pads, out_shape, 0.0, same_ok=not include_pad)
    if y.producer.options["Padding"] == 0:  # SAME: LiteRT's divisor is the real-element count, as PyTorch's here
        return y
    divisor = np.outer(*(_divisors(i, o, k, s, p, include_pad)
                         for i, o, k, s, p in zip(size, out_shape[2:], kernel, stride, pads)))
    factor = (kernel[0] * kernel[1] / divisor).astype(np.float32)
    if np.all(factor == 1):
        return y
    return binary(ctx, "MUL", y, factor.reshape(1, 1, *factor.shape), FusedActivationFunction=0)


def _max_pad_value(x) -> float:
    """What max pooling pads with: 0 after a ReLU / ReLU6 (every window holds an input element, all >= 0, so the
    maximum is the same, and a zero PAD is an op XNNPACK takes, PADV2 is not), else the lowest float."""
    op = x.producer
    if op is None:
        return _LOWEST
    return 0.0 if op.code in ("RELU", "RELU6") or op.options.get("FusedActivationFunction") in (1, 3) else _LOWEST


@register("aten.max_pool2d.default", emits=("MAX_POOL_2D", "PADV2", "PAD"))
def max_pool2d(ctx, node, a):
    if _pair(a["dilation"]) != (1, 1):
        ctx.fail("dilated max pooling is not supported")
    kernel = _pair(a["kernel_size"])
    stride = _pair(a["stride"]) if a["stride"] else kernel
    return _pool(ctx, "MAX_POOL_2D", a["self"], kernel, stride, _pair(a["padding"]),
                 tuple(node.meta["val"].shape), _max_pad_value(a["self"]))


@register("aten.avg_pool2d.default", emits=("AVERAGE_POOL_2D", "PAD", "MUL"))
def avg_pool2d(ctx, node, a):
    if a["divisor_override"]:
        ctx.fail("divisor_override is not supported")
    kernel = _pair(a["kernel_size"])
    stride = _pair(a["stride"]) if a["stride"] else kernel
    return _average(ctx, a["self"], kernel, stride, _pair(a["padding"]), tuple(node.meta["val"].shape),
                    bool(a["count_include_pad"]))


@register("aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default", emits=("MEAN", "AVERAGE_POOL_2D"))
def adaptive_avg_pool2d(ctx, node, a):
    x = ctx.layout(a["self"], NHWC)
    out_shape = tuple(node.meta["val"].shape)
    h, w = x.shape[2:]
    oh, ow = out_shape[2:]
    if (oh, ow) == (1, 1):
        out = ctx.tensor(out_shape, perm=NHWC)
        ctx.emit("MEAN", [x, ctx.const(np.array([1, 2], np.int32))], [out], KeepDims=True)
        return out
    if h % oh or w % ow:
        ctx.fail(f"adaptive pooling from {h}x{w} to {oh}x{ow} (not a whole factor) is not supported")
    k = (h // oh, w // ow)
    return _pool(ctx, "AVERAGE_POOL_2D", x, k, k, (0, 0), out_shape, 0.0)


def _as_2d(ctx, x):
    """(N, C, L) viewed as NHWC (N, 1, L, C): logical (N, C, 1, L)."""
    x = ctx.layout(x, (0, 2, 1))
    n, c, length = x.shape
    x4 = ctx.tensor((n, c, 1, length), perm=NHWC)
    ctx.emit("RESHAPE", [x, ctx.const(np.array([n, 1, length, c], np.int32))], [x4], NewShape=[n, 1, length, c])
    return x4


def _from_2d(ctx, y4, out_shape):
    y = ctx.tensor(out_shape, perm=(0, 2, 1))
    shape = [out_shape[0], out_shape[2], out_shape[1]]
    ctx.emit("RESHAPE", [y4, ctx.const(np.array(shape, np.int32))], [y], NewShape=shape)
    return y


def _one(v):
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)


@register("aten.max_pool1d.default", emits=("MAX_POOL_2D", "PADV2", "RESHAPE"))
def max_pool1d(ctx, node, a):
    if _one(a["dilation"]) != 1:
        ctx.fail("dilated max pooling is not supported")
    k = _one(a["kernel_size"])
    s = _one(a["stride"]) if a["stride"] else k
    out = tuple(node.meta["val"].shape)
    y = _pool(ctx, "MAX_POOL_2D", _as_2d(ctx, a["self"]), (1, k), (1, s), (0, _one(a["padding"])),
              (out[0], out[1], 1, out[2]), _LOWEST)
    return _from_2d(ctx, y, out)


@register("aten.avg_pool1d.default", emits=("AVERAGE_POOL_2D", "PAD", "MUL", "RESHAPE"))
def avg_pool1d(ctx, node, a):
    k = _one(a["kernel_size"])
    s = _one(a["stride"]) if a["stride"] else k
    out = tuple(node.meta["val"].shape)
    y = _average(ctx, _as_2d(ctx, a["self"]), (1, k), (1, s), (0, _one(a["padding"])), (out[0], out[1], 1, out[2]),
                 bool(a["count_include_pad"]))
    return _from_2d(ctx, y, out)


@register("aten.adaptive_avg_pool1d.default", emits=("MEAN", "FULLY_CONNECTED"))
def adaptive_avg_pool1d(ctx, node, a):
    x = a["self"]
    length, out = x.shape[-1], _one(a["output_size"])
    if out == 1:
        return reduce(ctx, "MEAN", x, [-1], True)
    # each output averages input[floor(i * L / O) : ceil((i + 1) * L / O)]: a constant averaging matrix
    weight = np.zeros((out, length), np.float32)
    for i in range(out):
        lo, hi = i * length // out, -(-(i + 1) * length // out)
        weight[i, lo:hi] = 1.0 / (hi - lo)
    return fully_connected(ctx, x, weight, None, tuple(node.meta["val"].shape))


@register("aten.adaptive_max_pool1d.default", emits=("REDUCE_MAX", "RESHAPE"))
def adaptive_max_pool1d(ctx, node, a):
    """Whole-factor windows only: ``(..., L)`` as ``(..., out, L / out)``, the maximum over the last axis."""
    if any(u.args[1] == 1 and len(u.users) for u in node.users):
        ctx.fail("adaptive_max_pool1d indices are not supported")
    x = a["self"]
    length, out = x.shape[-1], _one(a["output_size"])
    if length % out:
        ctx.fail(f"adaptive max pooling from {length} to {out} (not a whole factor) is not supported")
    windows = reshape_to(ctx, x, (*x.shape[:-1], out, length // out))
    return (reduce(ctx, "REDUCE_MAX", windows, [-1], False), None)


@register("aten.adaptive_max_pool2d.default", emits=("REDUCE_MAX", "MAX_POOL_2D"))
def adaptive_max_pool2d(ctx, node, a):
    if any(u.args[1] == 1 and len(u.users) for u in node.users):
        ctx.fail("adaptive_max_pool2d indices are not supported")
    x = ctx.layout(a["self"], NHWC)
    out_shape = tuple(node.meta["val"][0].shape)
    h, w = x.shape[2:]
    oh, ow = out_shape[2:]
    if (oh, ow) == (1, 1):
        out = ctx.tensor(out_shape, perm=NHWC)
        ctx.emit("REDUCE_MAX", [x, ctx.const(np.array([1, 2], np.int32))], [out], KeepDims=True)
        return (out, None)
    if h % oh or w % ow:
        ctx.fail(f"adaptive pooling from {h}x{w} to {oh}x{ow} (not a whole factor) is not supported")
    k = (h // oh, w // ow)
    return (_pool(ctx, "MAX_POOL_2D", x, k, k, (0, 0), out_shape, _LOWEST), None)
