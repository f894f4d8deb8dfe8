"""Broadcasting binary ops (add / sub / mul / div / maximum / minimum, tensors and scalars)."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter import layout
from slimkit.converter.ir import Tensor
from slimkit.converter.ops.dtypes import cast, out_dtype, promoted
from slimkit.converter.registry import register

_NP = {"float32": np.float32, "int32": np.int32, "int64": np.int64, "bool": np.bool_}


def _is_act(v) -> bool:
    return isinstance(v, Tensor) and not v.is_const


def _as_array(v, dtype):
    if isinstance(v, Tensor):
        return np.transpose(v.values(), np.argsort(v.order))
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy().astype(dtype)
    return np.asarray(v, dtype=dtype)


def broadcast_inputs(ctx, values, out_shape, dtype="float32"):
    """Lay out ``values`` to broadcast against each other in one common axis order; returns (tensors, order)."""
    rank = len(out_shape)
    acts = [v for v in values if _is_act(v)]
    order = layout.identity(rank)
    for v in acts:
        if v.rank == rank and v.perm is not None:
            order = v.order
            break
    out = []
    for v in values:
        if _is_act(v):
            if v.rank == rank:
                v = ctx.layout(v, order)
            elif order == layout.identity(rank) or v.rank == 0:
                v = ctx.layout(v, layout.identity(v.rank))
            else:
                v = layout.logical_bytes(ctx, v)
                shape = (1,) * (rank - v.rank) + tuple(v.shape)
                r = ctx.tensor(shape, v.dtype)
                ctx.emit("RESHAPE", [v, ctx.const(np.array(shape, np.int32))], [r], NewShape=list(shape))
                v = ctx.layout(r, order)
            out.append(v)
        else:
            out.append(ctx.const(layout.const_in_order(_as_array(v, _NP.get(dtype, np.float32)), rank, order)))
    return out, order


def binary(ctx, code, a, b, **options):
    """Emit ``code(a, b)`` with numpy broadcasting; the output shape comes from the inputs."""
    shape = tuple(np.broadcast_shapes(*(tuple(v.shape) if hasattr(v, "shape") else () for v in (a, b))))
    acts = [v for v in (a, b) if _is_act(v)]
    dtype = acts[0].dtype if acts else "float32"
    (x, y), order = broadcast_inputs(ctx, [a, b], shape, dtype)
    out = ctx.tensor(shape, dtype, perm=order)
    ctx.emit(code, [x, y], [out], **options)
    return out


def typed(ctx, a, dtype):
    """``a`` (normalised arguments) with ``self`` / ``other`` activations cast to ``dtype`` (PyTorch's promotion)."""
    return {**a, "self": cast(ctx, a["self"], dtype), "other": cast(ctx, a["other"], dtype)}


def _scaled(ctx, b, alpha):
    if alpha in (None, 1):
        return b
    if _is_act(b):
        return binary(ctx, "MUL", b, alpha, FusedActivationFunction=0)
    return _as_array(b, np.float32) * alpha


def _per_channel(x, value):
    """``value`` as a per-channel vector along logical axis 1 of ``x`` (None if it broadcasts otherwise)."""
    if _is_act(value) or x.rank < 2:
        return None
    arr = _as_array(value, np.float32)
    if arr.ndim > x.rank or np.broadcast_shapes(arr.shape, x.shape) != tuple(x.shape):
        return None
    arr = arr.reshape((1,) * (x.rank - arr.ndim) + arr.shape)
    if any(s != 1 for i, s in enumerate(arr.shape) if i != 1):
        return None
    return np.broadcast_to(arr.reshape(-1), (x.shape[1],)).astype(np.float32)


def fold_into_producer(ctx, node, x, value, kind):
    """``x * c`` / ``x + c`` with a per-channel constant ``c``, folded into the conv / linear producing ``x``."""
    from slimkit.converter.ops.norm import fold_affine

    if not _is_act(x) or not isinstance(node.args[0], torch.fx.Node):
        return None
    vec = _per_channel(x, value)
    if vec is None:
        return None
    ones, zeros = np.ones_like(vec), np.zeros_like(vec)
    ok = fold_affine(ctx, x, vec, zeros, node.args[0]) if kind == "mul" else \
        fold_affine(ctx, x, ones, vec, node.args[0])
    return x if ok else None


@register("aten.add.Tensor", "aten.add.Scalar", "aten.add_.Tensor", emits=("ADD",))
def add(ctx, node, a):
    a = typed(ctx, a, out_dtype(node))
    other = _scaled(ctx, a["other"], a.get("alpha"))
    folded = fold_into_producer(ctx, node, a["self"], other, "add")
    if folded is not None:
        return folded
    return binary(ctx, "ADD", a["self"], other, FusedActivationFunction=0)


@register("aten.sub.Tensor", "aten.sub.Scalar", "aten.sub_.Tensor", emits=("SUB",))
def sub(ctx, node, a):
    a = typed(ctx, a, out_dtype(node))
    other = _scaled(ctx, a["other"], a.get("alpha"))
    if not _is_act(other):
        folded = fold_into_producer(ctx, node, a["self"], -_as_array(other, np.float32), "add")
        if folded is not None:
            return folded
    return binary(ctx, "SUB", a["self"], other, FusedActivationFunction=0)


@register("aten.rsub.Scalar", "aten.rsub.Tensor", emits=("SUB",))
def rsub(ctx, node, a):
    a = typed(ctx, a, out_dtype(node))
    return binary(ctx, "SUB", a["other"], _scaled(ctx, a["self"], a.get("alpha")), FusedActivationFunction=0)


@register("aten.mul.Tensor", "aten.mul.Scalar", "aten.mul_.Tensor", emits=("MUL",))
def mul(ctx, node, a):
    a = typed(ctx, a, out_dtype(node))
    folded = fold_into_producer(ctx, node, a["self"], a["other"], "mul")
    if folded is not None:
        return folded
    return binary(ctx, "MUL", a["self"], a["other"], FusedActivationFunction=0)


@register("aten.div.Tensor", "aten.div.Scalar", "aten.div_.Tensor", emits=("DIV", "MUL"))
def div(ctx, node, a):
    a = typed(ctx, a, out_dtype(node))
    other = a["other"]
    if not _is_act(other):
        # x / c  ->  x * (1 / c): exact to one rounding, and MUL is faster everywhere
        inverse = 1.0 / _as_array(other, np.float32)
        folded = fold_into_producer(ctx, node, a["self"], inverse, "mul")
        if folded is not None:
            return folded
        return binary(ctx, "MUL", a["self"], inverse, FusedActivationFunction=0)
    return binary(ctx, "DIV", a["self"], other, FusedActivationFunction=0)


@register("aten.maximum.default", emits=("MAXIMUM",))
def maximum(ctx, node, a):
    a = typed(ctx, a, out_dtype(node))
    return binary(ctx, "MAXIMUM", a["self"], a["other"])


@register("aten.minimum.default", emits=("MINIMUM",))
def minimum(ctx, node, a):
    a = typed(ctx, a, out_dtype(node))
    return binary(ctx, "MINIMUM", a["self"], a["other"])


@register("aten.pow.Tensor_Scalar", emits=("MUL", "SQRT", "POW"))
def pow_(ctx, node, a):
    x, e = a["self"], a["exponent"]
    if e == 2:
        return binary(ctx, "MUL", x, x, FusedActivationFunction=0)
    if e == 0.5:
        return unary(ctx, "SQRT", x)
    return binary(ctx, "POW", x, float(e))


def unary(ctx, code, x, **options):
    out = ctx.tensor(x.shape, x.dtype, perm=x.perm)
    ctx.emit(code, [x], [out], **options)
    return out


@register("aten.neg.default", emits=("NEG",))
def neg(ctx, node, a):
    return unary(ctx, "NEG", a["self"])


@register("aten.sqrt.default", emits=("SQRT",))
def sqrt(ctx, node, a):
    return unary(ctx, "SQRT", a["self"])


@register("aten.rsqrt.default", emits=("RSQRT",))
def rsqrt(ctx, node, a):
    return unary(ctx, "RSQRT", a["self"])


@register("aten.exp.default", emits=("EXP",))
def exp(ctx, node, a):
    return unary(ctx, "EXP", a["self"])


@register("aten.log.default", emits=("LOG",))
def log(ctx, node, a):
    return unary(ctx, "LOG", a["self"])


@register("aten.abs.default", emits=("ABS",))
def abs_(ctx, node, a):
    return unary(ctx, "ABS", a["self"])


@register("aten.reciprocal.default", emits=("DIV",))
def reciprocal(ctx, node, a):
    return binary(ctx, "DIV", 1.0, a["self"], FusedActivationFunction=0)


@register("aten.floor.default", emits=("FLOOR",))
def floor(ctx, node, a):
    return unary(ctx, "FLOOR", a["self"])


@register("aten.sin.default", emits=("SIN",))
def sin(ctx, node, a):
    return unary(ctx, "SIN", a["self"])


@register("aten.cos.default", emits=("COS",))
def cos(ctx, node, a):
    return unary(ctx, "COS", a["self"])


_COMPARE = {"gt": "GREATER", "ge": "GREATER_EQUAL", "lt": "LESS", "le": "LESS_EQUAL", "eq": "EQUAL",
            "ne": "NOT_EQUAL"}


def compare(ctx, node, a, code):
    """``code(self, other)`` (GREATER, ...) on operands promoted as PyTorch does; a bool result."""
    a = typed(ctx, a, promoted(node))
    out = binary(ctx, code, a["self"], a["other"])
    out.dtype = "bool"
    return out


def _compare(ctx, node, a):
    return compare(ctx, node, a, _COMPARE[str(node.target).split(".")[1]])


for _name in _COMPARE:
    register(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar", emits=(_COMPARE[_name],))(_compare)


def select(ctx, condition, x, y):
    """``where(condition, x, y)`` with broadcasting; ``x`` / ``y`` tensors or scalars, in the output's dtype."""
    shape = tuple(ctx.node.meta["val"].shape)
    dtype = out_dtype(ctx.node)
    (c, x, y), order = broadcast_inputs(ctx, [condition, x, y], shape, dtype)
    if c.is_const:
        c = ctx.const(c.data.astype(np.bool_))
    out = ctx.tensor(shape, dtype, perm=order)
    ctx.emit("SELECT_V2", [c, x, y], [out])
    return out


@register("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar",
          emits=("SELECT_V2",))
def where(ctx, node, a):
    return select(ctx, a["condition"], a["self"], a["other"])


@register("aten.masked_fill.Scalar", "aten.masked_fill.Tensor", "aten.masked_fill_.Scalar",
          "aten.masked_fill_.Tensor", emits=("SELECT_V2",))
def masked_fill(ctx, node, a):
    value = a["value"]
    if isinstance(value, Tensor) and not value.is_const:
        ctx.fail("masked_fill with a computed fill value is not supported (use torch.where)")
    if isinstance(value, torch.Tensor):
        value = value.item()
    return select(ctx, a["mask"], value, a["self"])


@register("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten.type_as.default",
          emits=("CAST",))
def to_dtype(ctx, node, a):
    return cast(ctx, a["self"], out_dtype(node))
