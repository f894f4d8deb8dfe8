"""Bitwise and logical ops: on bool tensors LOGICAL_AND / OR / NOT (xor as NOT_EQUAL); on integers ``~x`` is
``-1 - x`` and ``^`` is BITWISE_XOR; integer ``&`` / ``|`` have no TFLite kernel and are refused."""

from __future__ import annotations

from slimkit.converter.ops.dtypes import promoted
from slimkit.converter.ops.elementwise import binary, typed, unary
from slimkit.converter.registry import register

_LOGICAL = {"and": "LOGICAL_AND", "or": "LOGICAL_OR", "xor": "NOT_EQUAL"}


def _logical(ctx, node, a, kind, dtype):
    """``self <kind> other`` for operands already of ``dtype``."""
    if dtype == "bool":
        return binary(ctx, _LOGICAL[kind], a["self"], a["other"])
    if kind == "xor" and dtype in ("int8", "int16", "int32", "uint8"):
        return binary(ctx, "BITWISE_XOR", a["self"], a["other"])
    ctx.fail(f"bitwise {kind} of {dtype} tensors has no TFLite kernel (bool tensors are supported)")
    return None


def _bitwise(ctx, node, a):
    kind = str(node.target).split(".")[1].split("_")[1]
    dtype = promoted(node)
    return _logical(ctx, node, typed(ctx, a, dtype), kind, dtype)


def _operator(ctx, node, a):
    """``x & y`` / ``x | y`` / ``x ^ y`` (attention masks combine booleans this way)."""
    kind = {"__and__": "and", "__or__": "or", "__xor__": "xor"}[str(node.target).split(".")[1]]
    dtype = promoted(node)
    return _logical(ctx, node, typed(ctx, a, dtype), kind, dtype)


for _kind in _LOGICAL:
    register(f"aten.bitwise_{_kind}.Tensor", f"aten.bitwise_{_kind}.Scalar", f"aten.bitwise_{_kind}_.Tensor",
             emits=("LOGICAL_AND", "LOGICAL_OR", "NOT_EQUAL", "BITWISE_XOR"))(_bitwise)
register("aten.__and__.Tensor", "aten.__and__.Scalar", "aten.__or__.Tensor", "aten.__or__.Scalar",
         "aten.__xor__.Tensor", "aten.__xor__.Scalar",
         emits=("LOGICAL_AND", "LOGICAL_OR", "NOT_EQUAL", "BITWISE_XOR"))(_operator)


def _truth(ctx, x):
    """``x != 0`` as bool (identity on bool tensors)."""
    if x.dtype == "bool":
        return x
    out = binary(ctx, "NOT_EQUAL", x, 0)
    out.dtype = "bool"
    return out


@register("aten.logical_and.default", "aten.logical_or.default", "aten.logical_xor.default",
          emits=("LOGICAL_AND", "LOGICAL_OR", "NOT_EQUAL"))
def logical_binary(ctx, node, a):
    kind = str(node.target).split(".")[1].split("_")[1]
    return _logical(ctx, node, {"self": _truth(ctx, a["self"]), "other": _truth(ctx, a["other"])}, kind, "bool")


@register("aten.bitwise_not.default", "aten.logical_not.default", emits=("LOGICAL_NOT", "SUB"))
def bitwise_not(ctx, node, a):
    x = a["self"]
    if x.dtype == "bool" or str(node.target).startswith("aten.logical"):
        return unary(ctx, "LOGICAL_NOT", _truth(ctx, x))
    if x.dtype.startswith("float"):
        ctx.fail("bitwise not of a float tensor")
    return binary(ctx, "SUB", -1, x, FusedActivationFunction=0)
