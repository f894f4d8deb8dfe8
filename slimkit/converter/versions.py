"""Operator versions: the lowest version of each builtin that supports what the op uses.

Example:

>>> from slimkit.converter.ir import Op
>>> op_version(Op('FULLY_CONNECTED', [], [], {'KeepNumDims': True}))
5
"""

from __future__ import annotations


def _is_hybrid(op) -> bool:
    return len(op.inputs) > 1 and op.inputs[1] is not None and op.inputs[1].dtype == "int8" and \
        op.inputs[0] is not None and op.inputs[0].dtype == "float32"


def _max_rank(op) -> int:
    return max((t.rank for t in op.inputs + op.outputs if t is not None), default=0)


def op_version(op) -> int:
    code, o = op.code, op.options
    if code == "CONV_2D":
        if _is_hybrid(op):
            return 5 if op.inputs[1].quant is not None and len(op.inputs[1].quant.scale) > 1 else 2
        x, w = op.inputs[0], op.inputs[1]
        if x is not None and w is not None and x.physical_shape[-1] != w.physical_shape[-1]:
            return 6  # grouped convolution
        return 1
    if code == "DEPTHWISE_CONV_2D":
        if _is_hybrid(op):
            return 6 if op.inputs[1].quant is not None and len(op.inputs[1].quant.scale) > 1 else 4
        return 2 if (o.get("DilationHFactor", 1) != 1 or o.get("DilationWFactor", 1) != 1) else 1
    if code == "FULLY_CONNECTED":
        if _is_hybrid(op):
            return 9 if o.get("AsymmetricQuantizeInputs") else 3
        return 5 if o.get("KeepNumDims") else 1
    if code == "TRANSPOSE_CONV":
        if o.get("FusedActivationFunction", 0):
            return 4
        return 3 if len(op.inputs) > 3 and op.inputs[3] is not None else 1
    if code in ("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM"):
        return 4 if _max_rank(op) > 4 else 1
    if code in ("STRIDED_SLICE", "SLICE", "PAD", "PADV2", "TRANSPOSE"):
        return 4 if _max_rank(op) > 4 else 1
    if code in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        return 3 if o.get("HalfPixelCenters") else 1
    if code == "BROADCAST_TO":
        return 2
    if code == "UNIDIRECTIONAL_SEQUENCE_LSTM":
        return 2 if _is_hybrid(op) else 1
    if code == "BIDIRECTIONAL_SEQUENCE_LSTM":
        return (3 if o.get("AsymmetricQuantizeInputs") else 2) if _is_hybrid(op) else 1
    if code == "BATCH_MATMUL":
        return 4 if _is_hybrid(op) else 2 if op.inputs[0].dtype == "int8" else 1
    if code == "DEQUANTIZE" and op.inputs[0].dtype == "int4":
        return 6
    if code == "DEQUANTIZE" and op.inputs[0].dtype == "int8" and op.inputs[0].quant is not None and \
            op.inputs[0].quant.scale.size > 1:
        return 5  # per-channel
    return 1
