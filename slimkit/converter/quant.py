"""Quantization parameters for the file: one per-tensor table, read by every int8 emitter.

``QuantTable`` maps a tensor name to ``(scale, zero_point, quantized_dimension)``; hybrid
(dynamic-range) quantization fills it from the float weights, and full-int8 export will fill it
from slimkit's calibration dict (``weight_scale`` / ``output_scale`` ...). Emission reads only the
table, so both sources share one code path.

Example:

>>> import numpy as np
>>> q, params = quantize_per_channel(np.array([[1.0, -2.0], [0.5, 0.25]], np.float32), axis=0)
>>> q.tolist(), [round(float(s), 5) for s in params.scale]
([[64, -127], [127, 64]], [0.01575, 0.00394])
"""

from __future__ import annotations

import numpy as np

from slimkit.converter.ir import Graph, QuantParams

HYBRID_WEIGHT_AXIS = {"FULLY_CONNECTED": 0, "CONV_2D": 0, "DEPTHWISE_CONV_2D": 3}


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
        if op.code == "UNIDIRECTIONAL_SEQUENCE_LSTM":
            for w in op.inputs[1:9]:
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
