"""Operator versions as TensorFlow Lite's converter writes them.

The rules are those of ``GetBuiltinOperatorVersion`` in TensorFlow's
``tensorflow/lite/tools/versioning/op_version.cc``, read over the signature ``op_signature.cc`` takes from a file:
each input's and output's type and shape, the op's options, and a few facts about the quantization (per-channel
weights, the scales of MUL's operands). One rule per builtin slimkit writes, in :data:`RULES`; a builtin without a
rule is version 1, as there. Ops whose version depends only on the first input's type share one table,
:data:`BY_INPUT_TYPE`.

Example:

>>> import numpy as np
>>> from slimkit.converter.ir import Op, QuantParams, Tensor
>>> grid = QuantParams(np.array([0.1], np.float32), np.array([0]))
>>> op_version(Op('DEQUANTIZE', [Tensor('q', (4,), 'int8', quant=grid)], [Tensor('x', (4,))]))
2
>>> op_version(Op('FULLY_CONNECTED', [Tensor('x', (1, 4)), Tensor('w', (2, 4)), None], [Tensor('y', (1, 2))],
...                {'KeepNumDims': True}))
5
"""

from __future__ import annotations

from collections.abc import Callable

from slimkit.converter.ir import Op, Tensor


class Signature:
    """What op_signature.cc reads from one op: input / output types and shapes (``None``: an omitted input) and the
    op's options."""

    def __init__(self, op: Op):
        self.op = op
        self.options = op.options

    def input(self, i: int) -> Tensor | None:
        return self.op.inputs[i] if i < len(self.op.inputs) else None

    def type(self, i: int) -> str | None:
        t = self.input(i)
        return t.dtype if t is not None else None

    def out(self, i: int = 0) -> str | None:
        return self.op.outputs[i].dtype if i < len(self.op.outputs) else None

    def rank(self, i: int) -> int:
        t = self.input(i)
        return t.rank if t is not None else 0

    def max_rank(self) -> int:
        return max((t.rank for t in self.op.inputs if t is not None), default=0)

    def broadcasts(self) -> bool:
        """``NeedBroadcastForBinaryInputs``: the two inputs' shapes differ."""
        a, b = self.input(0), self.input(1)
        return a is not None and b is not None and a.physical_shape != b.physical_shape

    def types(self, *wanted: str | None) -> bool:
        """``(input 0, input 1, ..., output 0)`` types equal ``wanted`` (the last entry is output 0's)."""
        *ins, out = wanted
        return all(self.type(i) == w for i, w in enumerate(ins)) and self.out() == out

    def hybrid(self, weight: int = 1) -> bool:
        """float32 input and output, int8 weight (input ``weight``)."""
        return self.type(0) == "float32" and self.type(weight) == "int8" and self.out() == "float32"

    def per_channel(self, i: int, axis: int | None = None) -> bool:
        """Input ``i`` (the output when ``i`` is -1) has one scale per entry of ``axis`` (its quantized dimension
        when None), more than one."""
        t = self.op.outputs[0] if i == -1 else self.input(i)
        if t is None or t.quant is None:
            return False
        scales = t.quant.scale.size
        axis = t.quant.quantized_dimension if axis is None else axis
        return scales > 1 and t.rank > axis and scales == t.physical_shape[axis]


RULES: dict[str, Callable[[Signature], int]] = {}
"""Builtin name -> its version rule (op_version.cc's ``case BuiltinOperator_<NAME>``)."""

BY_INPUT_TYPE: dict[str, dict[str, int]] = {
    **dict.fromkeys(("SOFTMAX", "MEAN", "MIRROR_PAD", "REDUCE_MAX", "REDUCE_MIN", "RELU6", "RSQRT"),
                    {"int16": 3, "int8": 2}),
    **dict.fromkeys(("SPLIT_V", "SUM", "LOG_SOFTMAX", "GREATER", "LESS_EQUAL", "SQUARED_DIFFERENCE"), {"int8": 2}),
    **dict.fromkeys(("LESS", "GREATER_EQUAL"), {"int16": 3, "int8": 2}),
    **dict.fromkeys(("EXP", "LOG", "REDUCE_PROD"), {"int8": 2, "int16": 2}),
    **dict.fromkeys(("ARG_MAX", "ARG_MIN"), {"bool": 3, "int8": 2}),
    "CONCATENATION": {"uint32": 4, "int16": 3, "int8": 2},
    "RELU": {"int16": 3, "int8": 2, "uint8": 2},
    "GELU": {"int8": 2, "uint8": 2},
    "LEAKY_RELU": {"int16": 2},
    "EQUAL": {"int16": 4, "string": 3, "int8": 2},
    "NOT_EQUAL": {"string": 3, "int8": 2},
    "FLOOR_DIV": {"int16": 3, "int8": 3, "float32": 2},
    "FLOOR_MOD": {"int16": 2, "int8": 2},
    "REVERSE_V2": {"int8": 3, "bool": 2},
    "TILE": {"int8": 3, "string": 2},
    "SQUEEZE": {"string": 2},
    "SELECT_V2": {"uint32": 2},
    "SIGN": {"int32": 2},
}
"""Builtins whose version is a function of input 0's type alone (1 for any type not listed)."""


def rule(*codes: str):
    def register(fn: Callable[[Signature], int]):
        for code in codes:
            RULES[code] = fn
        return fn
    return register


def op_version(op: Op) -> int:
    """The version TFLite's converter writes for ``op``."""
    sig = Signature(op)
    if op.code in RULES:
        return RULES[op.code](sig)
    return BY_INPUT_TYPE.get(op.code, {}).get(sig.type(0), 1)


@rule("CONV_2D")
def _conv_2d(s: Signature) -> int:
    if s.types("int16", "int8", "int16") and s.options.get("QuantizedBiasType"):
        return 8
    x, w = s.input(0), s.input(1)
    if x.physical_shape[-1] != w.physical_shape[-1]:
        return 6  # grouped
    if s.type(0) == s.type(1) == "int16":
        return 4
    if s.types("int8", "int8", "int8"):
        return 3
    if s.types("int8", "int4", "int8"):
        return 7
    if s.hybrid():
        return 5 if s.per_channel(1, 0) else 2
    return 1


@rule("DEPTHWISE_CONV_2D")
def _depthwise_conv_2d(s: Signature) -> int:
    if s.type(0) == s.type(1) == "int16":
        return 5
    if s.hybrid():
        return 6 if s.per_channel(1, 3) else 4
    if s.types("int8", "int8", "int8"):
        return 3
    if s.types("int8", "int4", "int8"):
        return 7
    return 2 if s.options.get("DilationHFactor", 1) != 1 or s.options.get("DilationWFactor", 1) != 1 else 1


@rule("FULLY_CONNECTED")
def _fully_connected(s: Signature) -> int:
    if s.hybrid() and s.per_channel(1, 0):
        return 12
    if s.types("int16", "int8", "int16") and s.options.get("QuantizedBiasType"):
        return 11
    if s.input(1) is not None and s.input(1).sparsity is not None:
        return 8
    if s.types("int16", "int16", "int16"):
        return 7
    if len(s.op.inputs) == 2:
        return 6
    if s.options.get("KeepNumDims"):
        return 5
    if s.types("int8", "int8", "int8"):
        return 4
    if s.types("int8", "int4", "int8"):
        return 10
    if s.hybrid():
        return 9 if s.options.get("AsymmetricQuantizeInputs") else 3
    return 2 if s.options.get("WeightsFormat", 0) == 1 else 1  # SHUFFLED4x16INT8


@rule("TRANSPOSE_CONV")
def _transpose_conv(s: Signature) -> int:
    if s.types("int16", "int8", "int16") and s.options.get("QuantizedBiasType"):
        return 5
    if s.options.get("FusedActivationFunction", 0):
        return 4
    if len(s.op.inputs) == 4 and s.input(3) is not None:
        return 3
    return 2 if s.type(1) == "int8" else 1


@rule("ADD")
def _add(s: Signature) -> int:
    if s.type(0) == "int16" and s.input(0).quant is None:
        return 5
    if s.type(0) == "int64":
        return 4
    if s.type(0) == "int16" and s.out() == "int16" and not s.options.get("PotScaleInt16", True):
        return 3
    return 2 if s.type(0) == "int8" else 1


@rule("SUB")
def _sub(s: Signature) -> int:
    if s.type(0) == "int16" and s.out() == "int16" and not s.options.get("PotScaleInt16", True):
        return 5
    if s.type(0) == "int64":
        return 4
    if s.broadcasts() and s.max_rank() > 4:
        return 3
    return 2 if s.type(0) == "int8" else 1


@rule("MUL")
def _mul(s: Signature) -> int:
    quantized = any(t is not None and t.quant is not None for t in s.op.inputs[:2])
    if (s.type(0) == "int16" and not quantized) or s.type(0) == "uint32":
        return 7
    if s.type(0) == "int64":
        return 5
    if s.type(0) == "int16":
        return 4
    grids = [t.quant for t in (s.input(0), s.input(1), s.op.outputs[0]) if t is not None and t.quant is not None]
    if len(grids) == 3:
        a, b, out = (float(q.scale.reshape(-1)[0]) for q in grids)
        if a and b and out and a * b / out >= 1.0:
            return 3
    return 2 if s.type(0) == "int8" else 1


@rule("DIV")
def _div(s: Signature) -> int:
    return 2 if s.broadcasts() and s.max_rank() > 4 else 1


@rule("MAXIMUM", "MINIMUM")
def _maximum(s: Signature) -> int:
    if s.type(0) == "int16" and s.out() == "int16":
        return 4
    if s.broadcasts() and s.max_rank() > 4:
        return 3
    return 2 if s.type(0) == "int8" else 1


@rule("AVERAGE_POOL_2D", "MAX_POOL_2D", "LOGISTIC", "TANH")
def _pool(s: Signature) -> int:
    if s.type(0) == "int16" and s.out() == "int16":
        return 3
    return 2 if s.type(0) == "int8" else 1


@rule("ABS")
def _abs(s: Signature) -> int:
    if s.type(0) == "int32":
        return 5
    if s.type(0) == "int16":
        return 3 if s.input(0).quant is not None else 4
    return 2 if s.type(0) in ("int8", "uint8") else 1


@rule("DEQUANTIZE")
def _dequantize(s: Signature) -> int:
    if s.type(0) == "int4":
        return 6
    if s.type(0) in ("int16", "float16"):
        return 3
    if s.type(0) == "int8":
        return 5 if s.per_channel(0) else 2
    return 1


@rule("QUANTIZE")
def _quantize(s: Signature) -> int:
    if "int4" in (s.type(0), s.out()):
        return 4
    if s.per_channel(-1):
        return 3
    return 2 if s.out() == "int16" else 1


@rule("TRANSPOSE")
def _transpose(s: Signature) -> int:
    if s.rank(0) > 5:
        return 6
    if s.type(0) == "int16":
        return 5
    if s.rank(0) > 4:
        return 4
    return {"bool": 3, "int8": 2}.get(s.type(0), 1)


@rule("PAD", "PADV2")
def _pad(s: Signature) -> int:
    if s.rank(0) > 4:
        return 4
    return {"int16": 3, "int8": 2}.get(s.type(0), 1)


@rule("SLICE")
def _slice(s: Signature) -> int:
    if s.type(0) == "uint32":
        return 6
    if s.rank(0) > 4:
        return 5
    return {"int16": 4, "string": 3, "int8": 2}.get(s.type(0), 1)


@rule("STRIDED_SLICE")
def _strided_slice(s: Signature) -> int:
    if s.options.get("Offset"):
        return 8
    if s.type(0) == "uint32":
        return 7
    if s.options.get("EllipsisMask", 0) or s.options.get("NewAxisMask", 0):
        return 6
    if s.type(0) == "string":
        return 5
    if s.rank(0) > 4:
        return 4
    return {"bool": 3, "int8": 2}.get(s.type(0), 1)


@rule("SPLIT")
def _split(s: Signature) -> int:
    return {"int16": 4, "int32": 3, "int8": 2}.get(s.type(1), 1)  # input 1 is the tensor (0 is the axis)


@rule("UNPACK")
def _unpack(s: Signature) -> int:
    if s.type(0) in ("int8", "uint8"):
        return 2
    if s.type(0) == "bool":
        return 3
    return 4 if s.type(0) == "int16" and s.out() == "int16" else 1


@rule("PACK")
def _pack(s: Signature) -> int:
    if s.type(0) == "int8":
        return 2
    if s.type(0) == "int16" and s.out() == "int16":
        return 3
    return 4 if s.type(0) == "uint32" else 1


@rule("GATHER")
def _gather(s: Signature) -> int:
    if s.type(0) == "int4":
        return 7
    if s.type(1) == "int16":
        return 6
    if s.options.get("BatchDims", 0):
        return 5
    return {"int16": 4, "bool": 3, "int8": 2}.get(s.type(0), 1)


@rule("GATHER_ND")
def _gather_nd(s: Signature) -> int:
    if s.type(0) == "bool":
        return 5
    if s.type(1) == "int16":
        return 4
    return {"int16": 3, "string": 2}.get(s.type(0), 1)


@rule("TOPK_V2")
def _topk(s: Signature) -> int:
    if "int16" in (s.type(0), s.type(1), s.out(1)):
        return 3
    return 2 if s.type(0) == "int8" else 1


@rule("RESIZE_BILINEAR")
def _resize_bilinear(s: Signature) -> int:
    if s.type(0) == "int16":
        return 4
    if s.options.get("HalfPixelCenters"):
        return 3
    return 2 if s.type(0) == "int8" else 1


@rule("RESIZE_NEAREST_NEIGHBOR")
def _resize_nearest(s: Signature) -> int:
    if s.type(0) == "int16":
        return 4
    if s.options.get("HalfPixelCenters") or s.options.get("AlignCorners"):
        return 3
    return 2 if s.type(0) == "int8" else 1


@rule("BATCH_MATMUL")
def _batch_matmul(s: Signature) -> int:
    if s.type(0) == "int16":
        return 3
    if s.type(0) == "int8":
        return 2
    return 4 if s.hybrid() and s.options.get("AsymmetricQuantizeInputs") else 1


@rule("BROADCAST_TO")
def _broadcast_to(s: Signature) -> int:
    return 3 if s.type(0) in ("int8", "int16") else 2  # version 1 was rolled back in TFLite


@rule("CAST")
def _cast(s: Signature) -> int:
    types = (s.type(0), s.out())
    if "bfloat16" in types:
        return 7
    if types == ("int4", "float32"):
        return 6
    if "float64" in types or "float16" in types:
        return 5
    if "uint16" in types:
        return 4
    if "int8" in types:
        return 3
    return 2 if "uint32" in types else 1


@rule("UNIDIRECTIONAL_SEQUENCE_LSTM")
def _sequence_lstm(s: Signature) -> int:
    if s.type(0) == "int16" and s.type(2) == "int8" and s.out() == "int16":
        return 5
    if s.options.get("DiagonalRecurrentTensors"):
        return 4
    if s.hybrid(weight=2):
        return 3 if s.options.get("AsymmetricQuantizeInputs") else 2
    return 1


@rule("BIDIRECTIONAL_SEQUENCE_LSTM")
def _bidirectional_lstm(s: Signature) -> int:
    if s.type(1) == "int8" and s.out() == "float32":
        return 3 if s.options.get("AsymmetricQuantizeInputs") else 2
    return 1
