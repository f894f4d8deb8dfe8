"""Normalisation and softmax: batch norm (folded into the producing conv / linear), layer norm, softmax."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter import layout
from slimkit.converter.ir import Tensor
from slimkit.converter.ops.common import norm_dim, sole_producer
from slimkit.converter.ops.elementwise import binary, unary
from slimkit.converter.registry import register

_FOLD_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 0}


def _np(v):
    return None if v is None else v.detach().cpu().numpy().astype(np.float32)


def fold_affine(ctx, x: Tensor, scale: np.ndarray, shift: np.ndarray, arg=None):
    """Fold ``x * scale + shift`` (per output channel) into the op producing ``x``; True on success."""
    op = sole_producer(ctx, ctx.node.args[0] if arg is None else arg, x, set(_FOLD_AXIS))
    if op is None or op.options.get("FusedActivationFunction", 0) != 0 or x.base is not None:
        return False
    if op.code == "FULLY_CONNECTED" and x.rank != 2:
        return False
    w_index, b_index = (1, 3) if op.code == "TRANSPOSE_CONV" else (1, 2)
    weight, bias = op.inputs[w_index], op.inputs[b_index]
    if weight.weight_codes is not None:  # a weight-only layer keeps its codes: the affine stays a MUL and an ADD
        return False
    axis = _FOLD_AXIS[op.code]
    new_weight = ctx.const(weight.data, name=weight.name)
    new_weight.data_scale, new_weight.quant_hint = weight.data_scale, weight.quant_hint
    new_weight.scaled(scale, axis)
    op.inputs[w_index] = new_weight
    op.inputs[b_index] = ctx.const(bias.values() * scale + shift, name=bias.name)
    return True


def batch_norm_affine(weight, bias, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` (float32, per channel) of an eval-mode BatchNorm, ``x * scale + shift``, as the file holds
    them (``weight`` / ``bias`` None: ones / zeros). The integer emulation of a standalone BatchNorm reads the same.

    Example:

    >>> scale, shift = batch_norm_affine(None, None, np.array([1.0]), np.array([4.0]), 0.0)
    >>> scale.tolist(), shift.tolist()
    ([0.5], [-0.5])
    """
    mean, var = np.asarray(mean, np.float32), np.asarray(var, np.float32)
    weight = np.ones_like(mean) if weight is None else np.asarray(weight, np.float32)
    bias = np.zeros_like(mean) if bias is None else np.asarray(bias, np.float32)
    inv = (1.0 / np.sqrt(var.astype(np.float64) + float(eps)))
    return (weight * inv).astype(np.float32), (bias - mean * weight * inv).astype(np.float32)


def _depthwise(ctx, x: Tensor, scale: np.ndarray, shift: np.ndarray) -> Tensor | None:
    """A standalone BatchNorm read from integers (a DEQUANTIZE) as a 1x1 DEPTHWISE_CONV_2D (weights ``scale``, bias
    ``shift``), which the int8 passes make an integer kernel (per-channel weights on +-127, an int32 bias; int16
    activations: LiteRT's 16x8 kernel, an int64 bias) fused with its ReLU: a 4-D tensor directly, ``(N, C, L)`` /
    ``(N, C)`` (BatchNorm1d) re-viewed as ``(N, 1, L, C)`` between RESHAPEs that fusion sees through. None where it
    stays MUL / ADD (float input, other ranks, a channel with scale 0)."""
    from slimkit.converter.ops.conv import NHWC, conv2d_nhwc

    if x.rank not in (2, 3, 4) or x.producer is None or x.producer.code != "DEQUANTIZE" or \
            x.producer.inputs[0].dtype not in ("int8", "int16") or not scale.all():
        return None
    weight = scale.reshape(-1, 1, 1, 1)
    if x.rank == 4:
        return conv2d_nhwc(ctx, x, weight, shift, (1, 1), (0, 0), (1, 1), x.shape[1], tuple(x.shape))
    order = (0, 2, 1) if x.rank == 3 else (0, 1)
    x = ctx.layout(x, order)
    n, c, length = x.shape[0], x.shape[1], x.shape[2] if x.rank == 3 else 1
    x4 = ctx.tensor((n, c, 1, length), perm=NHWC)
    ctx.emit("RESHAPE", [x, ctx.const(np.array([n, 1, length, c], np.int32))], [x4], NewShape=[n, 1, length, c])
    y4 = conv2d_nhwc(ctx, x4, weight, shift, (1, 1), (0, 0), (1, 1), c, (n, c, 1, length))
    y = ctx.tensor(x.shape, perm=order)
    physical = list(y.physical_shape)
    ctx.emit("RESHAPE", [y4, ctx.const(np.array(physical, np.int32))], [y], NewShape=physical).see_through = True
    return y


@register("aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default",
          emits=("MUL", "ADD", "DEPTHWISE_CONV_2D"))
def batch_norm(ctx, node, a):
    x = a["input"]
    if a.get("training"):
        ctx.fail("batch norm in training mode; call model.eval() first")
    scale, shift = batch_norm_affine(_np(a["weight"]), _np(a["bias"]), _np(a["running_mean"]),
                                     _np(a["running_var"]), a["eps"])
    channels = x.shape[1]
    if fold_affine(ctx, x, scale, shift):
        result = x
    elif (depthwise := _depthwise(ctx, x, scale, shift)) is not None:
        result = depthwise
    else:
        shape = (channels,) + (1,) * (x.rank - 2)
        y = binary(ctx, "MUL", x, scale.reshape(shape), FusedActivationFunction=0)
        result = binary(ctx, "ADD", y, shift.reshape(shape), FusedActivationFunction=0)
    if str(node.target).startswith("aten._native_batch_norm"):
        return (result, None, None)
    return result


def reduce_axes(ctx, code, x: Tensor, dims, keepdim=True):
    axes = sorted(x.order.index(norm_dim(d, x.rank)) for d in dims)
    shape = list(x.shape)
    for d in dims:
        shape[norm_dim(d, x.rank)] = 1
    out = ctx.tensor(tuple(shape), x.dtype, perm=x.perm)
    ctx.emit(code, [x, ctx.const(np.array(axes, np.int32))], [out], KeepDims=bool(keepdim))
    return out


def standardize(ctx, x, dims, eps):
    """``(x - mean) / sqrt(var + eps)`` with the (biased) statistics over ``dims``."""
    d = binary(ctx, "SUB", x, reduce_axes(ctx, "MEAN", x, dims), FusedActivationFunction=0)
    var = reduce_axes(ctx, "MEAN", binary(ctx, "MUL", d, d, FusedActivationFunction=0), dims)
    return binary(ctx, "MUL", d, unary(ctx, "RSQRT", binary(ctx, "ADD", var, float(eps), FusedActivationFunction=0)),
                  FusedActivationFunction=0)


@register("aten.layer_norm.default", emits=("MEAN", "SUB", "MUL", "ADD", "RSQRT"))
def layer_norm(ctx, node, a):
    x = ctx.layout(a["input"], layout.identity(a["input"].rank))
    y = standardize(ctx, x, list(range(x.rank - len(a["normalized_shape"]), x.rank)), a["eps"])
    if a["weight"] is not None:
        y = binary(ctx, "MUL", y, _np(a["weight"]), FusedActivationFunction=0)
    if a["bias"] is not None:
        y = binary(ctx, "ADD", y, _np(a["bias"]), FusedActivationFunction=0)
    return y


def along_last(ctx, x: Tensor, dim: int):
    """``x`` laid out with logical ``dim`` as its last physical axis."""
    dim = norm_dim(dim, x.rank)
    if x.order[-1] == dim:
        return x
    order = tuple(a for a in x.order if a != dim) + (dim,)
    return ctx.layout(x, order)


def _softmax(ctx, code, a, **options):
    x = along_last(ctx, a["self"] if "self" in a else a["input"], a["dim"])
    out = ctx.tensor(x.shape, perm=x.perm)
    ctx.emit(code, [x], [out], **options)
    return out


@register("aten.softmax.int", "aten._softmax.default", emits=("SOFTMAX",))
def softmax(ctx, node, a):
    return _softmax(ctx, "SOFTMAX", a, Beta=1.0)


@register("aten.log_softmax.int", "aten._log_softmax.default", emits=("LOG_SOFTMAX",))
def log_softmax(ctx, node, a):
    return _softmax(ctx, "LOG_SOFTMAX", a)


_ = torch  # (torch used for type checks by callers)
