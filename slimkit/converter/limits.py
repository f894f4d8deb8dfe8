"""Limits of XNNPACK, LiteRT's default CPU delegate, checked on the graph before anything is written.

XNNPACK prepares an int8 CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED or TRANSPOSE_CONV only when every output
channel's requantization scale, ``input_scale * weight_scale / output_scale`` computed in float32, is below 256
(XNNPACK's ``xnn_create_convolution2d_nhwc_qs8_qc8w`` and its siblings). A file past that limit is not merely
slower: the default interpreter fails in ``allocate_tensors`` ("failed to create XNNPACK runtime ... failed to
prepare"), naming only the delegate's node. :func:`check_xnnpack_limits` names the module path, the op and the
channel instead, before the file is written.

Example:

>>> import numpy as np
>>> from slimkit.converter.ir import Graph, Op, QuantParams, Tensor
>>> grid = lambda *s: QuantParams(np.array(s, np.float32), np.zeros(len(s), np.int64))
>>> x, out = Tensor('x', (1, 4), 'int8', quant=grid(48.0)), Tensor('y', (1, 2), 'int8', quant=grid(0.02))
>>> w = Tensor('w', (2, 4), 'int8', data=np.ones((2, 4), np.int8), quant=grid(0.001, 0.2))
>>> check_xnnpack_limits(Graph([Op('FULLY_CONNECTED', [x, w, None], [out], source='head')], [x], [out]))
Traceback (most recent call last):
...
slimkit.errors.UnsupportedOpError: ... FULLY_CONNECTED at head: output channel #1 ... 480 ...
"""

from __future__ import annotations

import numpy as np

from slimkit.converter.ir import Graph, Op
from slimkit.errors import UnsupportedOpError

MAX_REQUANTIZATION_SCALE = 256.0
"""XNNPACK refuses an int8 convolution or fully connected layer whose requantization scale reaches this."""

WEIGHTED = {"CONV_2D": (0, 1), "DEPTHWISE_CONV_2D": (0, 1), "FULLY_CONNECTED": (0, 1), "TRANSPOSE_CONV": (2, 1)}
"""Op -> positions of its (input, weight)."""


def requantization_scales(op: Op) -> np.ndarray | None:
    """Each output channel's ``input_scale * weight_scale / output_scale`` in float32 (as XNNPACK computes it), for
    an op of :data:`WEIGHTED` with int8 input, weight and output; None otherwise."""
    if op.code not in WEIGHTED:
        return None
    x, w = (op.inputs[i] for i in WEIGHTED[op.code])
    out = op.outputs[0]
    if any(t is None or t.dtype != "int8" or t.quant is None for t in (x, w, out)):
        return None
    scale = np.float32(x.quant.scale.reshape(-1)[0]) * w.quant.scale.astype(np.float32).reshape(-1)
    return scale / np.float32(out.quant.scale.reshape(-1)[0])


def check_xnnpack_limits(graph: Graph) -> None:
    """Raise if XNNPACK would refuse to prepare one of the graph's int8 ops.

    Raises:
        UnsupportedOpError: naming each such op (module path, op, output channel, its requantization scale and the
            scales it comes from) and what to do.
    """
    problems = []
    for op in graph.ops:
        scales = requantization_scales(op)
        if scales is None or scales.max() < MAX_REQUANTIZATION_SCALE:
            continue
        channel = int(scales.argmax())
        x, w = (op.inputs[i] for i in WEIGHTED[op.code])
        weight_scale = w.quant.scale.reshape(-1)[channel if w.quant.scale.size > 1 else 0]
        problems.append(f"{op.code} at {op.source or '<root>'}: output channel #{channel} has requantization scale "
                        f"{scales[channel]:.4g} (input scale {x.quant.scale.reshape(-1)[0]:.4g} x weight scale "
                        f"{weight_scale:.4g} / output scale {op.outputs[0].quant.scale.reshape(-1)[0]:.4g})")
    if problems:
        raise UnsupportedOpError(
            f"XNNPACK, LiteRT's default CPU delegate, fails to prepare an int8 layer whose requantization scale "
            f"(input scale x weight scale / output scale) is {MAX_REQUANTIZATION_SCALE:.0f} or more, and the "
            "interpreter then fails in allocate_tensors; nothing was written:\n  " + "\n  ".join(problems)
            + "\nExpected calibrated ranges where the layer's input grid is not far coarser than its output grid: "
            "recalibrate on representative data, or exclude the layer from quantization.")
