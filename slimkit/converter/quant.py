"""Quantization parameters for the file: one per-tensor table, read by every int8 emitter.

``QuantTable`` maps a tensor name to ``(scale, zero_point, quantized_dimension)``; hybrid
(dynamic-range) quantization fills it from the float weights, full-int8 export from the fake-quant
nodes in the captured graph (the same numbers as slimkit's calibration dict). Emission reads only the
table, so both sources share one code path.

Example:

>>> import numpy as np
>>> q, params = quantize_per_channel(np.array([[1.0, -2.0], [0.5, 0.25]], np.float32), axis=0)
>>> q.tolist(), [round(float(s), 5) for s in params.scale]
([[64, -127], [127, 64]], [0.01575, 0.00394])
"""

from __future__ import annotations

import warnings

import numpy as np

from slimkit.converter.ir import Graph, QuantParams

#: integer activation types and their ranges
INTEGER_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
HYBRID_WEIGHT_AXIS = {"FULLY_CONNECTED": 0, "CONV_2D": 0, "DEPTHWISE_CONV_2D": 3}
#: int8 kernels with weights: op code -> positions of (input, weight, bias) and the weight's output-channel axis
KERNEL_INPUTS = {"FULLY_CONNECTED": (0, 1, 2, 0), "CONV_2D": (0, 1, 2, 0), "DEPTHWISE_CONV_2D": (0, 1, 2, 3),
                 "TRANSPOSE_CONV": (2, 1, 3, 0)}
#: input positions of the sequence LSTMs' gate weights (input and recurrent, per direction)
LSTM_WEIGHTS = {"UNIDIRECTIONAL_SEQUENCE_LSTM": range(1, 9),
                "BIDIRECTIONAL_SEQUENCE_LSTM": [*range(1, 9), *range(18, 26)]}


class QuantTable(dict):
    """``{tensor_name: QuantParams}``: the single source of quantization parameters."""

    def set(self, name: str, scale, zero_point, quantized_dimension: int = 0) -> None:
        self[name] = QuantParams(np.atleast_1d(np.asarray(scale, np.float32)),
                                 np.atleast_1d(np.asarray(zero_point, np.int64)), quantized_dimension)


def quantize_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, QuantParams]:
    """Symmetric int8 per-channel quantization (q in [-127, 127], scale = max|w_c| / 127)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=reduce) / 127.0
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, QuantParams(scale, np.zeros_like(scale, dtype=np.int64), axis)


def quantize_per_tensor(w: np.ndarray) -> tuple[np.ndarray, QuantParams]:
    """Symmetric int8 per-tensor quantization (what TFLite's hybrid LSTM kernels take)."""
    scale = np.float32(max(float(np.abs(w).max()) / 127.0, 1e-12))
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, QuantParams(np.array([scale], np.float32), np.zeros(1, np.int64), 0)


def apply_hybrid(graph: Graph, options, table: QuantTable | None = None) -> QuantTable:
    """Dynamic-range quantization: int8 weights with per-channel scales, float activations."""
    table = QuantTable() if table is None else table
    for op in graph.ops:
        if op.code in LSTM_WEIGHTS:
            for w in (op.inputs[i] for i in LSTM_WEIGHTS[op.code]):
                if w.name not in table:
                    q, table[w.name] = quantize_per_tensor(w.values())
                    w.data = q
                w.dtype, w.quant = "int8", table[w.name]
            continue
        axis = HYBRID_WEIGHT_AXIS.get(op.code)
        if axis is None or (op.code != "FULLY_CONNECTED" and not options.hybrid_conv):
            continue
        w = op.inputs[1]
        if w is None or w.data is None or w.dtype != "float32":
            continue
        if w.name not in table:
            q, params = quantize_per_channel(w.values(), axis)
            table[w.name] = params
            w.data = q
        w.dtype = "int8"
        w.quant = table[w.name]
        if op.code == "FULLY_CONNECTED":
            op.options["AsymmetricQuantizeInputs"] = True
    return table


def _consumers(graph: Graph) -> dict[int, list]:
    users: dict[int, list] = {}
    for op in graph.ops:
        for t in op.inputs:
            if t is not None:
                users.setdefault(id(t), []).append(op)
    return users


_COMMUTES = {"PAD", "PADV2", "RESHAPE", "TRANSPOSE", "MAX_POOL_2D", "AVERAGE_POOL_2D", "STRIDED_SLICE", "SLICE",
             "GATHER", "MIRROR_PAD"}
#: ops with several outputs that only select values: op code -> position of the data input
_SPLITS = {"SPLIT": 1, "SPLIT_V": 0, "UNPACK": 0}


def _dequantized_outputs(graph: Graph, op, q) -> list:
    """``op``'s outputs become int8 tensors with ``q``'s parameters, each followed by a DEQUANTIZE to the float tensor
    its readers read; returns those DEQUANTIZE ops."""
    from slimkit.converter.ir import Op, Tensor

    dequantize = []
    for k, out in enumerate(op.outputs):
        q_out = Tensor(out.name + "_int8", out.shape, q.dtype, perm=out.perm, quant=q.quant)
        op.outputs[k] = q_out
        q_out.producer = op
        graph.quant_table[q_out.name] = q.quant
        dequantize.append(Op("DEQUANTIZE", [q_out], [out], source=op.source))
        out.producer = dequantize[-1]
    return dequantize


def _sink_below_split(graph: Graph, op) -> list | None:
    """DEQUANTIZE -> SPLIT / SPLIT_V / UNPACK becomes the split on int8 values, each piece then dequantized (None when
    the op does not read a per-tensor DEQUANTIZE)."""
    position = _SPLITS.get(op.code)
    data = op.inputs[position] if position is not None and len(op.inputs) > position else None
    deq = data.producer if data is not None else None
    if deq is None or deq.code != "DEQUANTIZE" or deq.inputs[0].quant is None or deq.inputs[0].quant.scale.size != 1:
        return None
    op.inputs[position] = deq.inputs[0]
    return [op, *_dequantized_outputs(graph, op, deq.inputs[0])]


def sink_dequantize(graph: Graph) -> None:
    """Move DEQUANTIZE below ops that commute with it (layout ops, zero padding, pooling, splits): int8 in, same params
    out."""
    from slimkit.converter.ir import Tensor

    ops = []
    for op in graph.ops:
        split = _sink_below_split(graph, op)
        if split is not None:
            ops += split
            continue
        deq = op.inputs[0].producer if op.inputs and op.inputs[0] is not None else None
        if op.code not in _COMMUTES or deq is None or deq.code != "DEQUANTIZE" or op.options.get(
                "FusedActivationFunction", 0):
            ops.append(op)
            continue
        q = deq.inputs[0]
        if op.code == "GATHER" and (q.quant is None or q.quant.scale.size != 1):  # per-channel rows would move
            ops.append(op)
            continue
        if op.code == "PADV2":  # the pad value moves onto the int8 grid (the lowest float: qmin)
            value = op.inputs[2]
            if value is None or not value.is_const or q.quant is None or q.quant.scale.size != 1:
                ops.append(op)
                continue
            lo, hi = INTEGER_RANGES[q.dtype]
            v = float(value.values().reshape(-1)[0])
            qv = np.clip(np.round(v / float(q.quant.scale[0])) + int(q.quant.zero_point[0]) if np.isfinite(v)
                         and abs(v) < 1e30 else (lo if v < 0 else hi), lo, hi)
            if qv == int(q.quant.zero_point[0]):  # PAD fills with the zero point: the same values, and XNNPACK
                op.code, op.inputs = "PAD", op.inputs[:2]  # takes PAD (not PADV2): max pooling after a ReLU
            else:
                op.inputs[2] = Tensor(value.name + "_q", (), q.dtype, data=np.array(qv, q.dtype), quant=q.quant)
                graph.quant_table[op.inputs[2].name] = q.quant
        op.inputs[0] = q
        ops += [op, *_dequantized_outputs(graph, op, q)]
    graph.ops = ops


def hoist_quantize(graph: Graph) -> None:
    """RESHAPE / SLICE -> QUANTIZE (per tensor, the reshape read by nothing else) becomes QUANTIZE -> RESHAPE / SLICE,
    so that a kernel whose output is re-viewed or cropped before its QUANTIZE (conv1d's CONV_2D, a padded
    TRANSPOSE_CONV) meets the QUANTIZE it becomes int8 with."""
    from slimkit.converter.ir import Tensor

    users = _consumers(graph)
    outputs = {id(t) for t in graph.outputs}
    index = {id(op): k for k, op in enumerate(graph.ops)}
    for op in list(graph.ops):
        reshape = op.inputs[0].producer if op.code == "QUANTIZE" and op.inputs[0] is not None else None
        if reshape is None or reshape.code not in ("RESHAPE", "SLICE") or op.outputs[0].quant is None \
                or op.outputs[0].quant.scale.size != 1 or len(users.get(id(reshape.outputs[0]), [])) != 1 \
                or id(reshape.outputs[0]) in outputs:
            continue
        x, out = reshape.inputs[0], op.outputs[0]
        middle = Tensor(out.name + "_pre", x.shape, out.dtype, perm=x.perm, quant=out.quant)
        graph.quant_table[middle.name] = out.quant
        op.inputs[0], op.outputs[0], middle.producer = x, middle, op
        reshape.inputs[0], reshape.outputs[0], out.producer = middle, out, reshape
        graph.ops[index[id(reshape)]], graph.ops[index[id(op)]] = op, reshape
        index[id(op)], index[id(reshape)] = index[id(reshape)], index[id(op)]


def infer_weight_grid(w: np.ndarray, axis: int, tol: float = 1e-3) -> QuantParams | None:
    """Per-channel symmetric parameters of weights that already sit on an int8 grid (fake-quantized with
    scale = max|w_c| / 127, possibly through folded BN arithmetic); None when they do not."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=reduce) / 127.0).astype(np.float32)
    if (scale == 0).any():
        return None
    shape = [1] * w.ndim
    shape[axis] = -1
    k = w / scale.reshape(shape)
    if np.abs(k - np.round(k)).max() > tol:
        return None
    return QuantParams(scale, np.zeros(scale.size, np.int64), axis)


def int8_kernels(graph: Graph) -> int:
    """DEQUANTIZE -> CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV -> QUANTIZE becomes one int8 kernel
    (TRANSPOSE_CONV on int8 activations only).

    Weights come from the op's recorded fake-quant parameters (``quant_hint``), the bias becomes int32 (int64 with
    int16 activations: LiteRT's 16x8 kernels) with scale ``input_scale * weight_scale``; the input and output
    parameters are the QUANTIZE ones, all read from the tensors' entries in the quantization table.
    """
    sink_dequantize(graph)
    hoist_quantize(graph)
    users = _consumers(graph)
    outputs = {id(t) for t in graph.outputs}
    dropped: set[int] = set()
    rewritten = 0
    for op in graph.ops:
        if op.code not in KERNEL_INPUTS:
            continue
        at_x, at_w, at_b, axis = KERNEL_INPUTS[op.code]
        x, w, b = op.inputs[at_x], op.inputs[at_w], op.inputs[at_b]
        if w is None or not w.is_const or b is None:
            continue
        if w.quant_hint is None:
            w.quant_hint = infer_weight_grid(w.values(), axis)
            if w.quant_hint is None:
                continue
        deq = x.producer
        after = users.get(id(op.outputs[0]), [])
        if deq is None or deq.code != "DEQUANTIZE" or len(after) != 1 or after[0].code != "QUANTIZE" \
                or id(op.outputs[0]) in outputs:
            continue
        q_in, q_out = deq.inputs[0], after[0].outputs[0]
        if q_in.dtype not in BIAS_TYPES or q_out.dtype != q_in.dtype or (op.code == "TRANSPOSE_CONV"
                                                                          and q_in.dtype != "int8"):
            continue
        values = w.values()  # applies a pending BatchNorm factor, to the grid as well
        hint = w.quant_hint
        shape = [1] * w.data.ndim
        shape[hint.quantized_dimension] = -1
        scale = np.broadcast_to(hint.scale, (w.data.shape[hint.quantized_dimension],)).astype(np.float32)
        w.data = np.clip(np.round(values / scale.reshape(shape)), -127, 127).astype(np.int8)
        w.dtype, w.quant = "int8", QuantParams(scale, np.zeros(scale.size, np.int64), hint.quantized_dimension)
        b.dtype = BIAS_TYPES[q_in.dtype]
        b.data, bias_scale = _integer_bias(b.values(), float(q_in.quant.scale[0]), scale, op, b.dtype)
        b.quant = QuantParams(bias_scale, np.zeros(scale.size, np.int64), 0)
        graph.quant_table[w.name], graph.quant_table[b.name] = w.quant, b.quant
        op.inputs[at_x] = q_in
        op.outputs[0] = q_out
        q_out.producer = op
        dropped.add(id(after[0]))
        if len(users.get(id(x), [])) == 1:
            dropped.add(id(deq))
        rewritten += 1
    graph.ops = [op for op in graph.ops if id(op) not in dropped]
    rewritten += _int8_elementwise(graph)
    from slimkit.converter.int8_ops import (
        drop_identity_quantize,
        int8_activation_ops,
        refuse_int16_float_ops,
        relax_fused_clamps,
    )

    rewritten += int8_activation_ops(graph)
    requantize(graph)
    drop_identity_quantize(graph)
    relax_fused_clamps(graph)
    refuse_int16_float_ops(graph)
    return rewritten


#: activation type of a conv / linear kernel -> its bias type (LiteRT's 16x8 kernels take an int64 bias)
BIAS_TYPES = {"int8": "int32", "int16": "int64"}


def _integer_bias(bias: np.ndarray, input_scale: float, weight_scale: np.ndarray, op,
                  dtype: str = "int32") -> tuple[np.ndarray, np.ndarray]:
    """The integer bias (``round(bias / (input_scale * weight_scale))``, of ``dtype``) and its scale. Values past
    the type's range are clipped, with a warning naming the layer (its input scale is so small, e.g. a dead layer,
    that the integer kernel cannot add that bias)."""
    scale = (input_scale * weight_scale).astype(np.float32)
    q = np.round(bias.astype(np.float64) / scale)
    limit = float(np.iinfo(dtype).max)
    if np.abs(q).max(initial=0) > limit:
        warnings.warn(f"{op.code} at {op.source or '<root>'}: bias / (input scale x weight scale) exceeds the {dtype} "
                      f"range (input scale {input_scale:.3g}) and is clipped, so the integer output differs from the "
                      "fake-quant model there. Calibrate on data that gives this layer's input a real range.",
                      RuntimeWarning, stacklevel=2)
    return np.clip(q, -limit, limit).astype(dtype), scale


def scalar_operand(t, dtype: str = "int8"):
    """A float constant holding one value ``c`` (a scalar factor, ``x * 0.5``, ``x / 2``) as an exact int8 constant of
    the same shape: ``sign(c)`` on the grid of scale ``|c|`` (scale 1 for 0), zero point 0; None for other tensors.
    An int8 MUL by it computes ``q * sign(c)`` times ``float32(a_scale * |c|) / output_scale``, which is what
    :func:`slimkit.frameworks.torch.int8_emulation.multiply` emulates for a scalar factor."""
    from slimkit.converter.ir import Tensor

    if t is None or not t.is_const or t.dtype != "float32" or dtype != "int8":
        return None
    values = np.asarray(t.values(), np.float32).reshape(-1)
    if values.size == 0 or not np.isfinite(values).all() or (values != values[0]).any():
        return None
    c = np.float32(values[0])
    params = QuantParams(np.array([abs(c) if c != 0 else 1.0], np.float32), np.zeros(1, np.int64), 0)
    data = np.full(t.data.shape, np.sign(c), np.int8)
    return Tensor(t.name + "_int8", t.shape, "int8", data=data, perm=t.perm, quant=params)


def _int8_source(t, constant_type: str | None):
    """The integer tensor an elementwise op reads for its input ``t``: a DEQUANTIZE's input, or (``constant_type``
    given: a MUL) a one-valued float constant as :func:`scalar_operand`; None otherwise."""
    if t is not None and t.producer is not None and t.producer.code == "DEQUANTIZE":
        return t.producer.inputs[0]
    return scalar_operand(t, constant_type) if constant_type is not None else None


def _int8_elementwise(graph: Graph) -> int:
    """DEQUANTIZE(a), DEQUANTIZE(b) -> ADD / SUB / MUL -> QUANTIZE becomes one int8 op (each input keeps
    its own parameters; TFLite rescales). A MUL by a float constant of one value (``x * 0.5``, ``x / 2``) takes it as
    an int8 constant (:func:`scalar_operand`)."""
    users = _consumers(graph)
    outputs = {id(t) for t in graph.outputs}
    dropped: set[int] = set()
    count = 0
    for op in graph.ops:
        if op.code not in ("ADD", "SUB", "MUL"):
            continue
        after = users.get(id(op.outputs[0]), [])
        if len(after) != 1 or after[0].code != "QUANTIZE" or id(op.outputs[0]) in outputs:
            continue
        q_out = after[0].outputs[0]
        sources = [_int8_source(t, q_out.dtype if op.code == "MUL" else None) for t in op.inputs]
        if any(t is None or t.dtype not in BIAS_TYPES or t.dtype != q_out.dtype for t in sources) or \
                all(t.is_const for t in sources):
            continue
        if q_out.dtype == "int16" and op.code != "MUL":
            op.options["PotScaleInt16"] = False  # LiteRT's general int16 ADD / SUB (any scales), not the 2**k one
        for t in sources:
            if t.is_const:
                graph.quant_table[t.name] = t.quant
        op.inputs = sources
        op.outputs = [q_out]
        q_out.producer = op
        dropped.add(id(after[0]))
        count += 1
    graph.ops = [op for op in graph.ops if id(op) not in dropped]
    return count


def requantize(graph: Graph) -> None:
    """DEQUANTIZE -> QUANTIZE becomes one int8 -> int8 QUANTIZE (requantization), also where the QUANTIZE reads a
    relabelled view (``permute`` / ``transpose``) of the DEQUANTIZE's output: it then reads the same view of the int8
    tensor (a channel shuffle's ``view(n, g, c // g, h, w).transpose(1, 2)``). Producers are found by tensor name
    (the file's identity of a tensor: two fake quantizations in a row on a view can leave the QUANTIZE reading a twin
    object of the DEQUANTIZE's output, with no producer set)."""
    from slimkit.converter.ir import Tensor

    producers = {t.name: op for op in graph.ops for t in op.outputs}
    for op in graph.ops:
        if op.code != "QUANTIZE":
            continue
        x = op.inputs[0]
        deq = producers.get((x.base or x).name)
        if deq is None or deq.code != "DEQUANTIZE" or deq.inputs[0].dtype not in ("int8", "uint8", "int16"):
            continue
        q = deq.inputs[0]  # the DEQUANTIZE may still feed float ops; else dead-op removal drops it
        op.inputs[0] = q if x.base is None else Tensor(q.name, x.shape, q.dtype, perm=x.perm, quant=q.quant, base=q)


def _io_type(options, mean=None) -> str:
    if options.quantize_io == "uint8":
        return "uint8"
    if options.quantize_io == "int8":
        return "int8"
    return "uint8" if mean is not None and mean > 127 else "int8"


def quantize_io(graph: Graph, options) -> None:
    """Integer model inputs / outputs (TinyNN's ``fuse_quant_dequant``, TF's ``inference_input_type``).

    ``quantize_io`` (True / ``'int8'`` / ``'uint8'``): an input consumed only by a QUANTIZE becomes an
    integer tensor (int8: that QUANTIZE's output itself; uint8: the same scale, zero point + 128, then
    a requantizing QUANTIZE); an output produced by a DEQUANTIZE becomes its int8 input (uint8: a
    requantizing QUANTIZE). ``quantized_input_stats=[(mean, std), ...]`` gives that input the
    parameters ``real = (q - mean) / std`` (int8, or uint8 when mean > 127 or ``quantize_io='uint8'``):
    the model's first QUANTIZE then requantizes from them (nothing when they agree), and a float
    model's input gets a DEQUANTIZE.
    """
    from slimkit.converter.ir import Op, Tensor

    users = _consumers(graph)
    stats = list(options.quantized_input_stats or [])
    dropped = set()
    prologue = []
    for i, t in enumerate(list(graph.inputs)):
        consumers = users.get(id(t), [])
        stat = stats[i] if i < len(stats) else None
        if len(consumers) == 1 and consumers[0].code == "QUANTIZE" and (options.quantize_io or stat is not None):
            quant_op = consumers[0]
            q = quant_op.outputs[0]
            if stat is not None:
                mean, std = stat
                dtype = _io_type(options, mean)
                params = QuantParams(np.array([1.0 / std], np.float32), np.array([int(round(mean))]), 0)
            else:
                dtype = _io_type(options)
                shift = 128 if dtype == "uint8" and q.dtype == "int8" else 0
                params = QuantParams(q.quant.scale, q.quant.zero_point + shift, 0)
            same = dtype == q.dtype and np.allclose(params.scale, q.quant.scale, rtol=1e-6, atol=0) and \
                int(params.zero_point[0]) == int(q.quant.zero_point[0])
            if same:
                q.producer = None
                graph.inputs[i] = q
                dropped.add(id(quant_op))
            else:
                new = Tensor(t.name + "_" + dtype, t.shape, dtype, perm=t.perm, quant=params)
                graph.quant_table[new.name] = params
                graph.inputs[i] = new
                if dtype == "uint8" and q.dtype == "int8":
                    # uint8 -> int8 with the same scale (zero point - 128) first: TFLite's exact fast path;
                    # its direct uint8 -> int8 rescale rounds differently from the float arithmetic
                    shifted = QuantParams(params.scale, params.zero_point - 128, 0)
                    mid = Tensor(t.name + "_int8", t.shape, "int8", perm=t.perm, quant=shifted)
                    graph.quant_table[mid.name] = shifted
                    to_int8 = Op("QUANTIZE", [new], [mid])
                    mid.producer = to_int8
                    prologue.append(to_int8)
                    new = mid
                    if np.allclose(shifted.scale, q.quant.scale, rtol=1e-6, atol=0) and \
                            int(shifted.zero_point[0]) == int(q.quant.zero_point[0]):
                        dropped.add(id(quant_op))
                        for op in graph.ops:
                            op.inputs = [mid if x is q else x for x in op.inputs]
                        continue
                quant_op.inputs[0] = new
        elif stat is not None and t.dtype == "float32":
            mean, std = stat
            dtype = _io_type(options, mean)
            q = Tensor(t.name + "_int", t.shape, dtype, perm=t.perm,
                       quant=QuantParams(np.array([1.0 / std], np.float32), np.array([int(round(mean))]), 0))
            graph.quant_table[q.name] = q.quant
            deq = Op("DEQUANTIZE", [q], [t])
            t.producer = deq
            prologue.append(deq)
            graph.inputs[i] = q
    graph.ops = prologue + graph.ops
    if options.quantize_io:
        for i, t in enumerate(list(graph.outputs)):
            op = t.producer
            if op is None or op.code != "DEQUANTIZE" or len(users.get(id(t), [])) != 0:
                continue
            src = op.inputs[0]
            if _io_type(options) == "uint8" and src.dtype == "int8":
                params = QuantParams(src.quant.scale, src.quant.zero_point + 128, 0)
                out = Tensor(t.name + "_uint8", t.shape, "uint8", perm=t.perm, quant=params)
                graph.quant_table[out.name] = params
                op.code, op.outputs = "QUANTIZE", [out]
                out.producer = op
                graph.outputs[i] = out
            else:
                graph.outputs[i] = src
                dropped.add(id(op))
    graph.ops = [op for op in graph.ops if id(op) not in dropped]
