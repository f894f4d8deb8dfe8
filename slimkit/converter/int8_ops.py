"""Int8 activation ops: no float island left between int8 kernels.

After lowering, every fake-quantized tensor is QUANTIZE -> DEQUANTIZE, so an op between two quantized
tensors reads ``DEQUANTIZE(a) -> op -> QUANTIZE``. The passes here turn such chains into the op on
int8 tensors, following TFLite's int8 kernel rules:

- ops that rescale freely (MEAN, SUM, GELU, RELU, RELU6, LEAKY_RELU) take the QUANTIZE's output parameters;
- HARD_SWISH stays float between its DEQUANTIZE and QUANTIZE: XNNPACK takes float HARD_SWISH (and the DEQUANTIZE /
  QUANTIZE around it) but no int8 one, which split the delegated graph once more per use (a MobileNetV3 block ran
  2.8x slower); the emulation computes the same float32 steps;
- ops whose int8 kernel needs fixed output parameters (SOFTMAX, LOGISTIC: (1/256, -128); TANH:
  (1/128, 0); all three (1/32768, 0) on int16) are rewritten only when the quantizer used those parameters (the
  ``tflite`` profiles do);
- data movement and comparisons (CONCATENATION, PAD, RESHAPE, pooling, RESIZE_*, MAXIMUM, ...) work on raw
  int8 values: a one-input op keeps its input's parameters and is followed by a requantizing QUANTIZE
  where the output's differ; a multi-input op (CONCATENATION, MAXIMUM) requantizes the inputs instead;
- a QUANTIZE from int8 to the same parameters is an identity and disappears.

The same rules write int16 activations (the ``'tflite_int16x8'`` profile) where LiteRT has a 16x8 kernel
(:data:`INT16_OPS`); an op it has none for would stay a float island, and :func:`refuse_int16_float_ops` names it.

A chain the user kept float (``quantize_op_action: 'disable'`` / ``'rewrite'``) has no QUANTIZE after
it and keeps its DEQUANTIZE / QUANTIZE boundary.

Example:

>>> sorted(FIXED_OUTPUT)
['LOGISTIC', 'SOFTMAX', 'TANH']
"""

from __future__ import annotations

import numpy as np

from slimkit.compression.quant import clamp_cannot_bind
from slimkit.converter.ir import Graph, Op, QuantParams, Tensor
from slimkit.converter.quant import INTEGER_RANGES
from slimkit.errors import UnsupportedOpError

#: int8 kernels that requantize from the input's to the output's parameters
RESCALING = {"MEAN", "SUM", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "SQUARED_DIFFERENCE", "GELU",
             "BATCH_MATMUL"}
#: integer kernels with fixed output parameters: op -> {activation type: (scale, zero_point)}
FIXED_OUTPUT = {"SOFTMAX": {"int8": (1.0 / 256, -128), "int16": (1.0 / 32768, 0)},
                "LOGISTIC": {"int8": (1.0 / 256, -128), "int16": (1.0 / 32768, 0)},
                "TANH": {"int8": (1.0 / 128, 0), "int16": (1.0 / 32768, 0)}}
#: int8 kernels that need the output parameters equal to the input's (data movement)
SAME_PARAMS = {"CONCATENATION", "PAD", "RESHAPE", "TRANSPOSE", "MAX_POOL_2D", "AVERAGE_POOL_2D",
               "STRIDED_SLICE", "SLICE", "SPLIT", "SPLIT_V", "SQUEEZE", "PACK", "UNPACK", "GATHER", "TILE",
               "BROADCAST_TO", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "MAXIMUM", "MINIMUM", "REDUCE_MAX",
               "REDUCE_MIN"}
#: ops LiteRT's builtin kernels run on int16 activations (int8 weights where they have weights)
INT16_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "MEAN", "SUM",
                       "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "RESHAPE", "PAD", "PADV2", "SOFTMAX",
                       "LOGISTIC", "TANH", "QUANTIZE", "DEQUANTIZE", "RELU", "RELU6", "LEAKY_RELU", "TRANSPOSE",
                       "STRIDED_SLICE", "SLICE", "SPLIT", "SPLIT_V", "SQUEEZE", "PACK", "UNPACK", "GATHER",
                       "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "MAXIMUM", "MINIMUM", "REDUCE_MAX",
                       "REDUCE_MIN"})
_INT8 = ("int8", "uint8", "int16")


def same_params(a: QuantParams | None, b: QuantParams | None) -> bool:
    """One per-tensor grid: the same float32 scale and zero point. Exactly: XNNPACK refuses a CONCATENATION whose
    input scale differs from its output's in the last bit, and a kernel computes with the scale it is given."""
    return a is not None and b is not None and a.scale.size == b.scale.size == 1 and \
        np.float32(a.scale[0]) == np.float32(b.scale[0]) and int(a.zero_point[0]) == int(b.zero_point[0])


def _users(graph: Graph) -> dict[int, list[Op]]:
    users: dict[int, list[Op]] = {}
    for op in graph.ops:
        for t in op.inputs:
            if t is not None:
                users.setdefault(id(t), []).append(op)
    return users


def _requantize(graph: Graph, src: Tensor, params: QuantParams, dtype: str, new_ops: list) -> Tensor:
    out = Tensor(src.name + "_rq", src.shape, dtype, perm=src.perm, quant=params)
    graph.quant_table[out.name] = params
    op = Op("QUANTIZE", [src], [out])
    out.producer = op
    new_ops.append(op)
    return out


def _on_grid(t: Tensor, q_out: Tensor) -> Tensor:
    """The float constant ``t`` rounded onto ``q_out``'s (per-tensor) grid: exact for MAXIMUM / MINIMUM /
    CONCATENATION, since rounding to the grid is monotonic and the output is rounded to it anyway."""
    scale, zero = float(q_out.quant.scale[0]), int(q_out.quant.zero_point[0])
    lo, hi = INTEGER_RANGES[q_out.dtype]
    data = np.clip(np.round(t.values() / scale) + zero, lo, hi).astype(q_out.dtype)
    return Tensor(t.name + "_q", t.shape, q_out.dtype, data=data, perm=t.perm, quant=q_out.quant)


def int8_activation_ops(graph: Graph) -> int:
    """DEQUANTIZE(s) -> op -> QUANTIZE becomes the op on int8 tensors (see the module docstring)."""
    users = _users(graph)
    outputs = {id(t) for t in graph.outputs}
    dropped: set[int] = set()
    ops: list[Op] = []
    count = 0
    for op in graph.ops:
        code = op.code
        if code not in RESCALING and code not in FIXED_OUTPUT and code not in SAME_PARAMS or \
                op.options.get("FusedActivationFunction", 0) or len(op.outputs) != 1:
            ops.append(op)
            continue
        acts = [i for i, t in enumerate(op.inputs) if t is not None and not t.is_const]
        if code == "BATCH_MATMUL" and len(acts) != len(op.inputs):  # a float constant operand: the op stays float
            ops.append(op)
            continue
        producers = [op.inputs[i].producer for i in acts]
        after = users.get(id(op.outputs[0]), [])
        if not acts or any(p is None or p.code != "DEQUANTIZE" or p.inputs[0].dtype not in _INT8
                           or p.inputs[0].quant is None for p in producers) or len(after) != 1 or \
                after[0].code != "QUANTIZE" or after[0].outputs[0].dtype not in _INT8 or id(op.outputs[0]) in outputs:
            ops.append(op)
            continue
        q_out = after[0].outputs[0]
        if q_out.dtype == "int16" and code not in INT16_OPS:  # stays float: refuse_int16_float_ops names it
            ops.append(op)
            continue
        if code in FIXED_OUTPUT:
            fixed = FIXED_OUTPUT[code].get(q_out.dtype)
            if fixed is None or not same_params(q_out.quant, QuantParams(np.array([fixed[0]]), np.array([fixed[1]]))):
                ops.append(op)
                continue
        new_ops: list[Op] = []
        new_inputs = list(op.inputs)
        for i, p in zip(acts, producers):
            q_in = p.inputs[0]
            if code in SAME_PARAMS and (not same_params(q_in.quant, q_out.quant) or q_in.dtype != q_out.dtype):
                if len(acts) == 1:  # keep the input's grid, requantize after
                    break
                q_in = _requantize(graph, q_in, q_out.quant, q_out.dtype, new_ops)  # concat, maximum, ...
            new_inputs[i] = q_in
        else:
            if code in SAME_PARAMS:  # a float constant operand (clamp's bound) joins the output grid
                new_inputs = [_on_grid(t, q_out) if t is not None and t.is_const and t.dtype == "float32" else t
                              for t in new_inputs]
            op.inputs = new_inputs
            ops += new_ops
            op.outputs[0] = q_out
            q_out.producer = op
            dropped.add(id(after[0]))
            ops.append(op)
            count += 1
            continue
        # a one-input data-movement op whose output grid differs: run it on the input grid, then requantize
        q_in = producers[0].inputs[0]
        mid = Tensor(op.outputs[0].name + "_int8", op.outputs[0].shape, q_in.dtype, perm=op.outputs[0].perm,
                     quant=q_in.quant)
        graph.quant_table[mid.name] = q_in.quant
        op.inputs[acts[0]] = q_in
        op.outputs[0] = mid
        mid.producer = op
        after[0].inputs[0] = mid
        ops.append(op)
        count += 1
    graph.ops = [op for op in ops if id(op) not in dropped]
    return count


def _identity(op: Op) -> bool:
    """An int8 op that gives its input unchanged: a QUANTIZE to the same grid, or a RELU / RELU6 from and to one grid
    whose lowest value is 0 (a ReLU of a ReLU's output, ``torch.relu(nn.ReLU()(x))``) and, for RELU6, highest at most
    6: neither bound can bind."""
    if op.code not in ("QUANTIZE", "RELU", "RELU6") or not op.inputs or op.inputs[0] is None:
        return False
    src, out = op.inputs[0], op.outputs[0]
    if src.dtype != out.dtype or src.dtype not in _INT8 or not same_params(src.quant, out.quant) or \
            src.perm != out.perm:
        return False
    if op.code == "QUANTIZE":
        return True
    lo, hi = INTEGER_RANGES[src.dtype]
    return clamp_cannot_bind(op.code.lower(), int(src.quant.zero_point[0]), lo, hi, float(src.quant.scale[0]))


def drop_identity_quantize(graph: Graph) -> int:
    """A QUANTIZE from an int8 tensor to the same parameters and type, and a RELU / RELU6 that cannot change its
    input (:func:`_identity`), are removed (their readers read the input)."""
    replace: dict[int, Tensor] = {}

    def replaced(t: Tensor | None) -> Tensor | None:
        if t is None or t.base is None or id(t.base) not in replace:
            return replace.get(id(t), t)
        src = replace[id(t.base)]  # a relabelled view of the removed output: the same view of its input
        return Tensor(src.name, t.shape, src.dtype, perm=t.perm, quant=src.quant, base=src)

    kept = []
    for op in graph.ops:
        op.inputs = [replaced(t) for t in op.inputs]
        if _identity(op):
            replace[id(op.outputs[0])] = op.inputs[0]
            continue
        kept.append(op)
    graph.outputs = [replaced(t) for t in graph.outputs]
    removed = len(graph.ops) - len(kept)
    graph.ops = kept
    return removed


#: fused activations with bounds: (code, lower, upper)
_BOUNDED = {3: (0.0, 6.0), 2: (-1.0, 1.0)}
_RANGES = INTEGER_RANGES


def relax_fused_clamps(graph: Graph) -> int:
    """A fused RELU6 / RELU_N1_TO_1 whose bounds lie outside an int8 op's representable output range is
    lowered to RELU (or none): the int8 saturation already applies them, and TFLite refuses to prepare a
    kernel whose bound does not fit in int32 steps (a near-zero output scale, e.g. a dead layer)."""
    changed = 0
    for op in graph.ops:
        activation = op.options.get("FusedActivationFunction", 0)
        out = op.outputs[0] if op.outputs else None
        if activation not in _BOUNDED or out is None or out.dtype not in _RANGES or out.quant is None:
            continue
        qmin, qmax = _RANGES[out.dtype]
        scale, zero = float(out.quant.scale[0]), int(out.quant.zero_point[0])
        lower, upper = _BOUNDED[activation]
        if (qmax - zero) * scale > upper:  # the upper bound can bind
            continue
        if (qmin - zero) * scale >= lower:  # neither bound can bind
            op.options["FusedActivationFunction"] = 0
        elif lower == 0.0:  # only the lower bound: RELU's
            op.options["FusedActivationFunction"] = 1
        else:
            continue
        changed += 1
    return changed


def refuse_int16_float_ops(graph: Graph) -> None:
    """Raises :class:`~slimkit.errors.UnsupportedOpError` naming (module path, op) each op left in float between int16
    tensors (it reads a DEQUANTIZE of an int16 tensor and feeds a QUANTIZE to int16, directly or through other float
    ops: a grouped transposed conv's TRANSPOSE_CONVs, CONCATENATION and RELU): LiteRT has no 16x8 kernel
    for it (:data:`INT16_OPS`), or none for that form of it (a float constant operand), so the file would not be the
    int16x8 model the profile asks for. Nothing is written then."""
    users = _users(graph)
    computed = [op for op in graph.ops if op.code not in ("QUANTIZE", "DEQUANTIZE")]
    from_int16: set[int] = set()  # float tensors computed (through float ops) from a DEQUANTIZE of int16
    for op in graph.ops:
        if (op.code == "DEQUANTIZE" and op.inputs[0].dtype == "int16") or \
                (op in computed and any(t is not None and id(t) in from_int16 for t in op.inputs)):
            from_int16.update(id(t) for t in op.outputs if t is not None)
    to_int16: set[int] = set()  # ops whose result reaches a QUANTIZE to int16 (through float ops)
    for op in reversed(computed):
        if any((user.code == "QUANTIZE" and user.outputs[0].dtype == "int16") or id(user) in to_int16
               for out in op.outputs if out is not None for user in users.get(id(out), [])):
            to_int16.add(id(op))
    found: list[str] = []
    for op in computed:
        entry = f"{op.source or '<root>'} ({op.code})"
        if id(op) in to_int16 and any(t is not None and id(t) in from_int16 for t in op.inputs) and entry not in found:
            found.append(entry)
    if found:
        raise UnsupportedOpError(f"The int16x8 file cannot hold these ops as LiteRT 16x8 kernels: {', '.join(found)}. "
                                 "They would run in float between int16 tensors: LiteRT has int16 kernels for "
                                 f"{sorted(INT16_OPS)}, taking int16 operands only. Replace those ops by ones "
                                 "in that list (e.g. hardswish by relu6), or quantize with the 'tflite' profile, "
                                 "whose int8 files keep such ops as float islands.")
