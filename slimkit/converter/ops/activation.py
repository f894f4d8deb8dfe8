"""Activations; relu / relu6 / relu_n1_to_1 fold into the producing op when it is their only user (tanh never:
LiteRT ignores or rejects a fused TANH)."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter.ops.common import fuse_activation
from slimkit.converter.ops.elementwise import binary, unary
from slimkit.converter.registry import register


def _act(ctx, code, x, fusable=None):
    if fusable:
        fused = fuse_activation(ctx, x, fusable)
        if fused is not None:
            return fused
    return unary(ctx, code, x)


@register("aten.relu.default", "aten.relu_.default", emits=("RELU",))
def relu(ctx, node, a):
    return _act(ctx, "RELU", a["self"], "RELU")


@register("aten.relu6.default", "aten.relu6_.default", emits=("RELU6",))
def relu6(ctx, node, a):
    return _act(ctx, "RELU6", a["self"], "RELU6")


@register("aten.hardtanh.default", "aten.hardtanh_.default", emits=("RELU6", "RELU_N1_TO_1", "MAXIMUM", "MINIMUM"))
def hardtanh(ctx, node, a):
    lo, hi = float(a["min_val"]), float(a["max_val"])
    if (lo, hi) == (0.0, 6.0):
        return _act(ctx, "RELU6", a["self"], "RELU6")
    if (lo, hi) == (-1.0, 1.0):
        return _act(ctx, "RELU_N1_TO_1", a["self"], "RELU_N1_TO_1")
    return _clamp(ctx, a["self"], lo, hi)


def _clamp(ctx, x, lo, hi):
    if lo is not None:
        x = binary(ctx, "MAXIMUM", x, float(lo))
    if hi is not None:
        x = binary(ctx, "MINIMUM", x, float(hi))
    return x


@register("aten.clamp.default", "aten.clamp_.default", "aten.clip.default", emits=("MAXIMUM", "MINIMUM", "RELU",
                                                                                  "RELU6"))
def clamp(ctx, node, a):
    lo, hi = a["min"], a["max"]
    if lo == 0 and hi is None:
        return _act(ctx, "RELU", a["self"], "RELU")
    if lo == 0 and hi == 6:
        return _act(ctx, "RELU6", a["self"], "RELU6")
    return _clamp(ctx, a["self"], lo, hi)


@register("aten.tanh.default", "aten.tanh_.default", emits=("TANH",))
def tanh(ctx, node, a):
    return unary(ctx, "TANH", a["self"])


@register("aten.sigmoid.default", "aten.sigmoid_.default", emits=("LOGISTIC",))
def sigmoid(ctx, node, a):
    return unary(ctx, "LOGISTIC", a["self"])


@register("aten.leaky_relu.default", "aten.leaky_relu_.default", emits=("LEAKY_RELU",))
def leaky_relu(ctx, node, a):
    return unary(ctx, "LEAKY_RELU", a["self"], Alpha=float(a["negative_slope"]))


@register("aten.prelu.default", "aten._prelu_kernel.default", emits=("PRELU",))
def prelu(ctx, node, a):
    x = a["self"]
    w = a["weight"]
    if not isinstance(w, torch.Tensor):
        ctx.fail("expected a constant PReLU weight")
    w = w.detach().cpu().numpy().astype(np.float32)
    rank = x.rank
    if w.size == 1 or rank < 2:
        alpha = w.reshape(-1)[:1] if w.size == 1 else w
    else:
        shape = [1] * rank
        shape[1] = w.size
        alpha = w.reshape(shape).transpose(x.order)
        while alpha.ndim > 1 and alpha.shape[0] == 1:
            alpha = alpha[0]
    out = ctx.tensor(x.shape, perm=x.perm)
    ctx.emit("PRELU", [x, ctx.const(np.ascontiguousarray(alpha, np.float32))], [out])
    return out


@register("aten.elu.default", "aten.elu_.default", emits=("ELU", "EXP", "MUL"))
def elu(ctx, node, a):
    if float(a["alpha"]) != 1.0 or float(a["scale"]) != 1.0 or float(a["input_scale"]) != 1.0:
        ctx.fail("only elu with alpha=1 is supported")
    return unary(ctx, "ELU", a["self"])


@register("aten.gelu.default", "aten.gelu_.default", emits=("GELU",))
def gelu(ctx, node, a):
    return unary(ctx, "GELU", a["self"], Approximate=a["approximate"] == "tanh")


@register("aten.silu.default", "aten.silu_.default", emits=("LOGISTIC", "MUL"))
def silu(ctx, node, a):
    x = a["self"]
    s = unary(ctx, "LOGISTIC", x)
    return binary(ctx, "MUL", x, s, FusedActivationFunction=0)


@register("aten.hardswish.default", "aten.hardswish_.default", emits=("HARD_SWISH",))
def hardswish(ctx, node, a):
    return unary(ctx, "HARD_SWISH", a["self"])


@register("aten.hardsigmoid.default", "aten.hardsigmoid_.default", emits=("ADD", "MUL"))
def hardsigmoid(ctx, node, a):
    # relu6(x + 3) / 6, the RELU6 fused into the ADD
    y = binary(ctx, "ADD", a["self"], 3.0, FusedActivationFunction=3)
    return binary(ctx, "MUL", y, 1.0 / 6.0, FusedActivationFunction=0)


@register("aten.clamp_min.default", "aten.clamp_min_.default", emits=("MAXIMUM", "RELU"))
def clamp_min(ctx, node, a):
    if a["min"] == 0:
        return _act(ctx, "RELU", a["self"], "RELU")
    return _clamp(ctx, a["self"], a["min"], None)


@register("aten.clamp_max.default", "aten.clamp_max_.default", emits=("MINIMUM",))
def clamp_max(ctx, node, a):
    return _clamp(ctx, a["self"], None, a["max"])


@register("aten.softplus.default", emits=("EXP", "ADD", "LOG"))
def softplus(ctx, node, a):
    if float(a["beta"]) != 1.0:
        ctx.fail("only softplus with beta=1 is supported")
    # log(1 + exp(x)); PyTorch returns x itself above `threshold`
    x = a["self"]
    y = unary(ctx, "LOG", binary(ctx, "ADD", unary(ctx, "EXP", x), 1.0, FusedActivationFunction=0))
    mask = binary(ctx, "GREATER", x, float(a["threshold"]))
    mask.dtype = "bool"
    out = ctx.tensor(x.shape, perm=x.perm)
    ctx.emit("SELECT_V2", [mask, x, y], [out])
    return out
