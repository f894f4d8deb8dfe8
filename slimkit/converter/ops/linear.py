"""Linear algebra: linear / addmm (FULLY_CONNECTED), matmul / bmm (BATCH_MATMUL), embedding (GATHER)."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter import layout
from slimkit.converter.ir import Tensor
from slimkit.converter.ops.elementwise import binary
from slimkit.converter.ops.quantize import attach_weight_params
from slimkit.converter.registry import register
from slimkit.converter.weight_only import layer_codes


def _const(v):
    if isinstance(v, torch.Tensor):
        return np.asarray(v.detach().cpu().numpy(), dtype=np.float32)
    if isinstance(v, Tensor) and v.is_const:
        return np.transpose(v.values(), np.argsort(v.order))
    return None


def fully_connected(ctx, x: Tensor, weight: np.ndarray, bias, out_shape, codes=None):
    """FULLY_CONNECTED of ``x`` with a constant ``(out, in)`` weight; ``codes``: the weight-only layer's
    :class:`~slimkit.converter.weight_only.WeightCodes` the weight is written from (a graph pass)."""
    x = layout.logical_bytes(ctx, x) if x.rank <= 2 else ctx.layout(x, layout.identity(x.rank))
    out = ctx.tensor(out_shape)
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias
    weight = ctx.const(weight, name=ctx.node.name + "_weight")
    weight.weight_codes = codes
    ctx.emit("FULLY_CONNECTED", [x, weight, ctx.const(bias, name=ctx.node.name + "_bias")], [out],
             FusedActivationFunction=0, KeepNumDims=len(out_shape) > 2)
    return out


_FLATTENS = {"aten.flatten.using_ints", "aten.view.default", "aten.reshape.default", "aten._unsafe_view.default"}


def _channels_last_flatten(ctx, node, x, weight):
    """flatten(NHWC feature map) -> Linear: reorder the weight's columns instead of transposing the data."""
    src = node.args[0]
    fake_quants = []  # flatten -> fake quant(s) -> Linear (quantized models): innermost first
    while hasattr(src, "target") and str(src.target).startswith("aten.fake_quantize_per_tensor_affine") and \
            len(src.users) == 1:
        value = ctx.values.get(src.name)
        if not isinstance(value, Tensor) or value.producer is None or value.producer.code != "DEQUANTIZE":
            return None
        fake_quants.insert(0, value.producer.inputs[0])
        src = src.args[0]
    if not hasattr(src, "target") or str(src.target) not in _FLATTENS or len(src.users) != 1 or x.rank != 2:
        return None
    inner = ctx.values.get(getattr(src.args[0], "name", None))
    if not isinstance(inner, Tensor) or inner.rank != 4 or inner.order != (0, 2, 3, 1) or inner.is_const:
        return None
    n, c, h, w = inner.shape
    if x.shape != (n, c * h * w) or ctx.options.optimize < 1:
        return None
    flat = ctx.tensor((n, h * w * c), name=src.name + "_nhwc")
    ctx.emit("RESHAPE", [inner, ctx.const(np.array([n, h * w * c], np.int32))], [flat], NewShape=[n, h * w * c])
    for k, fake_quant in enumerate(fake_quants):  # the same per-tensor fake quantization, channels-last
        q = ctx.tensor(flat.shape, fake_quant.dtype, name=f"{src.name}_nhwc_q{k}")
        q.quant = fake_quant.quant
        ctx.quant_table[q.name] = q.quant
        ctx.emit("QUANTIZE", [flat], [q])
        flat = ctx.tensor(flat.shape, name=f"{src.name}_nhwc_dq{k}")
        ctx.emit("DEQUANTIZE", [q], [flat])
    out = weight.shape[0]
    return flat, weight.reshape(out, c, h, w).transpose(0, 2, 3, 1).reshape(out, -1)


@register("aten.linear.default", emits=("FULLY_CONNECTED",))
def linear(ctx, node, a):
    weight = _const(a["weight"])
    if weight is None:
        ctx.fail("expected a constant weight")
    x = a["input"]
    codes = layer_codes(ctx.captured.model, ctx.source)
    rewritten = _channels_last_flatten(ctx, node, x, weight) if codes is None else None  # keeps the codes' blocks
    if rewritten is not None:
        x, weight = rewritten
    out = fully_connected(ctx, x, weight, _const(a["bias"]), tuple(node.meta["val"].shape), codes)
    attach_weight_params(ctx, a["weight"], out)  # per output row: unchanged by the column reorder
    return out


@register("aten.addmm.default", emits=("FULLY_CONNECTED",))
def addmm(ctx, node, a):
    w = _const(a["mat2"])
    if w is None or a["beta"] != 1 or a["alpha"] != 1 or not isinstance(a["mat1"], Tensor):
        ctx.fail("only addmm(bias, x, constant_weight) is supported")
    return fully_connected(ctx, a["mat1"], np.ascontiguousarray(w.T), _const(a["self"]).reshape(-1),
                           tuple(node.meta["val"].shape), layer_codes(ctx.captured.model, ctx.source))


def batch_matmul(ctx, x, y, out_shape, adj_y=False):
    tensors = []
    for v in (x, y):
        if isinstance(v, Tensor) and not v.is_const:
            tensors.append(ctx.layout(v, layout.identity(v.rank)))
        else:
            tensors.append(ctx.const(_const(v)))
    out = ctx.tensor(out_shape)
    ctx.emit("BATCH_MATMUL", tensors, [out], AdjX=False, AdjY=adj_y, AsymmetricQuantizeInputs=False)
    return out


@register("aten.matmul.default", "aten.bmm.default", "aten.mm.default", emits=("BATCH_MATMUL", "FULLY_CONNECTED"))
def matmul(ctx, node, a):
    x, y = a["self"], a["mat2"] if "mat2" in a else a["other"]
    out_shape = tuple(node.meta["val"].shape)
    w = _const(y)
    if w is not None and w.ndim == 2 and isinstance(x, Tensor) and not x.is_const:
        return fully_connected(ctx, x, np.ascontiguousarray(w.T), None, out_shape)
    return batch_matmul(ctx, x, y, out_shape)


@register("aten.embedding.default", emits=("GATHER",))
def embedding(ctx, node, a):
    weight = _const(a["weight"])
    idx = a["indices"]
    if weight is None:
        ctx.fail("expected a constant embedding table")
    idx = ctx.layout(idx, layout.identity(idx.rank))
    out = ctx.tensor(tuple(node.meta["val"].shape))
    ctx.emit("GATHER", [ctx.const(weight, name=node.name + "_table"), idx], [out], Axis=0, BatchDims=0)
    return out


@register("aten.baddbmm.default", emits=("BATCH_MATMUL", "MUL", "ADD"))
def baddbmm(ctx, node, a):
    return _beta_alpha(ctx, a, batch_matmul(ctx, a["batch1"], a["batch2"], tuple(node.meta["val"].shape)))


@register("aten.addbmm.default", emits=("BATCH_MATMUL", "SUM", "MUL", "ADD"))
def addbmm(ctx, node, a):
    from slimkit.converter.ops.reduce import reduce

    b1, b2 = a["batch1"], a["batch2"]
    products = batch_matmul(ctx, b1, b2, (b1.shape[0], b1.shape[1], b2.shape[2]))
    return _beta_alpha(ctx, a, reduce(ctx, "SUM", products, [0], False))


def _beta_alpha(ctx, a, y):
    """``beta * self + alpha * y``."""
    if a["alpha"] != 1:
        y = binary(ctx, "MUL", y, float(a["alpha"]), FusedActivationFunction=0)
    bias = a["self"]
    if a["beta"] != 1:
        bias = binary(ctx, "MUL", bias, float(a["beta"]), FusedActivationFunction=0) if isinstance(bias, Tensor) \
            else bias * a["beta"]
    return binary(ctx, "ADD", y, bias, FusedActivationFunction=0)
