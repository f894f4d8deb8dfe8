"""Norms of vectors: ``linalg_vector_norm`` (L1, L2, max, any p) and RMS normalisation (``rms_norm``)."""

from __future__ import annotations

import math

import numpy as np
import torch

from slimkit.converter.ops.elementwise import binary, unary
from slimkit.converter.ops.norm import reduce_axes
from slimkit.converter.ops.reduce import reduce
from slimkit.converter.registry import register


@register("aten.linalg_vector_norm.default", emits=("ABS", "MUL", "SUM", "SQRT", "REDUCE_MAX", "REDUCE_MIN", "POW"))
def linalg_vector_norm(ctx, node, a):
    x, p, dims, keep = a["self"], float(a["ord"]), a["dim"], a["keepdim"]
    if a["dtype"] not in (None, torch.float32):
        ctx.fail(f"linalg_vector_norm with dtype={a['dtype']} is not supported (float32 only)")
    if p == 2:
        return unary(ctx, "SQRT", reduce(ctx, "SUM", binary(ctx, "MUL", x, x, FusedActivationFunction=0), dims, keep))
    magnitude = unary(ctx, "ABS", x)
    if p == 1:
        return reduce(ctx, "SUM", magnitude, dims, keep)
    if math.isinf(p):
        return reduce(ctx, "REDUCE_MAX" if p > 0 else "REDUCE_MIN", magnitude, dims, keep)
    if p <= 0:
        ctx.fail(f"linalg_vector_norm with ord={p} is not supported (ord > 0 or +-inf)")
    total = reduce(ctx, "SUM", binary(ctx, "POW", magnitude, p), dims, keep)
    return binary(ctx, "POW", total, 1.0 / p)


@register("aten.rms_norm.default", emits=("MUL", "MEAN", "ADD", "RSQRT"))
def rms_norm(ctx, node, a):
    x = a["input"]
    dims = list(range(x.rank - len(a["normalized_shape"]), x.rank))
    eps = a["eps"] if a["eps"] is not None else float(np.finfo(np.float32).eps)
    square = reduce_axes(ctx, "MEAN", binary(ctx, "MUL", x, x, FusedActivationFunction=0), dims)
    y = binary(ctx, "MUL", x, unary(ctx, "RSQRT", binary(ctx, "ADD", square, float(eps), FusedActivationFunction=0)),
               FusedActivationFunction=0)
    if a["weight"] is not None:
        y = binary(ctx, "MUL", y, a["weight"], FusedActivationFunction=0)
    return y
