"""Arithmetic beyond the basic binary ops: sign, round, floor division, remainder, tensor powers, the comparison
aliases (``greater``, ``less_equal``, ...), GLU, and the statistics reductions (std / var / prod / min / max)."""

from __future__ import annotations

import numpy as np

from slimkit.converter.ops.common import norm_dim
from slimkit.converter.ops.dtypes import cast, out_dtype
from slimkit.converter.ops.elementwise import binary, compare, typed, unary
from slimkit.converter.ops.reduce import reduce
from slimkit.converter.ops.shape import _split
from slimkit.converter.registry import register

# LiteRT's FLOOR_DIV has no int64 kernel: int64 goes through int32 (exact while the values fit in int32)
_INT32_ONLY = {"FLOOR_DIV"}


@register("aten.sign.default", emits=("SIGN", "GREATER", "LESS", "CAST", "SUB"))
def sign(ctx, node, a):
    x = a["self"]
    if x.dtype in ("float32", "int32"):
        return unary(ctx, "SIGN", x)
    # SIGN has no kernel for other integer types: (x > 0) - (x < 0)
    positive, negative = (cast(ctx, _bool(binary(ctx, code, x, 0)), x.dtype) for code in ("GREATER", "LESS"))
    return binary(ctx, "SUB", positive, negative, FusedActivationFunction=0)


def _bool(t):
    t.dtype = "bool"
    return t


@register("aten.round.default", emits=("ROUND",))
def round_(ctx, node, a):
    # TFLite's ROUND and torch.round both round half to even
    x = a["self"]
    return unary(ctx, "ROUND", x) if x.dtype.startswith("float") else x


def _binary_typed(ctx, node, code, a, dtype):
    """``code(self, other)`` in ``dtype``; int64 operands of int32-only kernels are computed in int32."""
    work = "int32" if dtype == "int64" and code in _INT32_ONLY else dtype
    a = typed(ctx, a, work)
    return cast(ctx, binary(ctx, code, a["self"], a["other"]), dtype)


@register("aten.floor_divide.default", "aten.floor_divide.Scalar", "aten.floor_divide_.Tensor", emits=("FLOOR_DIV",))
def floor_divide(ctx, node, a):
    return _binary_typed(ctx, node, "FLOOR_DIV", a, out_dtype(node))


@register("aten.remainder.Tensor", "aten.remainder.Scalar", emits=("FLOOR_MOD",))
def remainder(ctx, node, a):
    return _binary_typed(ctx, node, "FLOOR_MOD", a, out_dtype(node))


@register("aten.pow.Tensor_Tensor", "aten.pow.Scalar", emits=("POW",))
def pow_tensor(ctx, node, a):
    dtype = out_dtype(node)
    return binary(ctx, "POW", cast(ctx, a["self"], dtype), cast(ctx, a["exponent"], dtype))


_ALIASES = {"greater": "GREATER", "greater_equal": "GREATER_EQUAL", "less": "LESS", "less_equal": "LESS_EQUAL",
            "not_equal": "NOT_EQUAL"}


def _compare_alias(ctx, node, a):
    return compare(ctx, node, a, _ALIASES[str(node.target).split(".")[1]])


for _alias, _code in _ALIASES.items():
    register(f"aten.{_alias}.Tensor", f"aten.{_alias}.Scalar", emits=(_code,))(_compare_alias)


@register("aten.glu.default", emits=("SPLIT", "STRIDED_SLICE", "LOGISTIC", "MUL"))
def glu(ctx, node, a):
    x = a["self"]
    dim = norm_dim(a["dim"], x.rank)
    half = x.shape[dim] // 2
    first, second = _split(ctx, node, x, [half, half], dim)
    return binary(ctx, "MUL", first, unary(ctx, "LOGISTIC", second), FusedActivationFunction=0)


def _dims(x, dim):
    return list(range(x.rank)) if dim is None or len(dim) == 0 else [norm_dim(d, x.rank) for d in dim]


def _variance(ctx, x, dims, correction, keepdim):
    n = int(np.prod([x.shape[d] for d in dims]))
    mean = reduce(ctx, "MEAN", x, dims, True)
    d = binary(ctx, "SUB", x, mean, FusedActivationFunction=0)
    sq = reduce(ctx, "SUM", binary(ctx, "MUL", d, d, FusedActivationFunction=0), dims, keepdim)
    denominator = n - correction
    if denominator <= 0:
        ctx.fail(f"{n} element(s) with correction={correction}: the result is NaN / inf")
    return binary(ctx, "MUL", sq, 1.0 / denominator, FusedActivationFunction=0)


def _correction(a):
    if "correction" in a:
        return 1.0 if a["correction"] is None else float(a["correction"])
    return 1.0 if a.get("unbiased", True) else 0.0


@register("aten.var.correction", "aten.var.dim", "aten.var.default", emits=("MEAN", "SUB", "MUL", "SUM"))
def var(ctx, node, a):
    x = a["self"]
    return _variance(ctx, x, _dims(x, a.get("dim")), _correction(a), a.get("keepdim", False))


@register("aten.std.correction", "aten.std.dim", "aten.std.default", emits=("MEAN", "SUB", "MUL", "SUM", "SQRT"))
def std(ctx, node, a):
    x = a["self"]
    return unary(ctx, "SQRT", _variance(ctx, x, _dims(x, a.get("dim")), _correction(a), a.get("keepdim", False)))


@register("aten.prod.default", emits=("REDUCE_PROD",))
def prod_all(ctx, node, a):
    return reduce(ctx, "REDUCE_PROD", a["self"], None, False)


@register("aten.prod.dim_int", emits=("REDUCE_PROD",))
def prod(ctx, node, a):
    return reduce(ctx, "REDUCE_PROD", a["self"], [a["dim"]], a["keepdim"])


@register("aten.max.default", emits=("REDUCE_MAX",))
def max_all(ctx, node, a):
    return reduce(ctx, "REDUCE_MAX", a["self"], None, False)


@register("aten.min.default", emits=("REDUCE_MIN",))
def min_all(ctx, node, a):
    return reduce(ctx, "REDUCE_MIN", a["self"], None, False)


@register("aten.mish.default", "aten.mish_.default", emits=("EXP", "ADD", "LOG", "GREATER", "SELECT_V2", "TANH",
                                                            "MUL"))
def mish(ctx, node, a):
    from slimkit.converter.ops.activation import softplus

    x = a["self"]
    smooth = softplus(ctx, node, {"self": x, "beta": 1.0, "threshold": 20.0})  # PyTorch's mish uses these
    return binary(ctx, "MUL", x, unary(ctx, "TANH", smooth), FusedActivationFunction=0)
