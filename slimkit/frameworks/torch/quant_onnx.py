"""Fake quantization of any width from 2 to 16 bits as ONNX QuantizeLinear / DequantizeLinear.

ONNX stores quantized values in int8 / uint8 (any opset) or int16 / uint16 (opset 21). A
``bits``-bit fake quantization with integer range ``[qmin, qmax]`` inside such a container equals
``Clip(x, (qmin - zp) * s, (qmax - zp) * s)`` followed by the container's QuantizeLinear /
DequantizeLinear with the same scale ``s`` and zero point ``zp``: the clip bounds lie on the grid, so
clipped values round to ``qmin`` / ``qmax`` and the container's wider range never saturates. While
exporting, :func:`onnx_fake_quant` emits exactly that (torch's fake-quant op with the container's
range after a clamp); :func:`translation_table` gives ``torch.onnx`` the int16 / uint16 translation
its built-in one lacks.

Example:

>>> import numpy as np, torch
>>> from slimkit.compression.quant import affine_params, Scheme
>>> from slimkit.frameworks.torch.quant_ops import OPS
>>> from slimkit.frameworks.torch.quant_onnx import container, onnx_fake_quant
>>> p = affine_params(np.array([-1.0]), np.array([1.0]), 4, Scheme(symmetric=True, narrow=True))
>>> container(p)
(-128, 127)
>>> x = torch.linspace(-2, 2, 41)
>>> torch.equal(onnx_fake_quant(x, p), OPS.fake_quant(x, p))
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from slimkit.compression.channels import channel_shape
from slimkit.compression.quant import QParams, qrange
from slimkit.errors import UnsupportedOpError
from slimkit.utils.optional import require

MAX_BITS = 16
"""Widest quantization ONNX can hold (int16 / uint16 QuantizeLinear, opset 21)."""

QDQ16_OPSET = 21


def container(params: QParams) -> tuple[int, int]:
    """The ONNX integer range holding ``params``' ``[qmin, qmax]``: int8 / uint8 up to 8 bits, int16 / uint16 up to
    16 (signed when ``qmin < 0``)."""
    return qrange(8 if params.bits <= 8 else MAX_BITS, signed=params.qmin < 0)


def onnx_fake_quant(x: torch.Tensor, params: QParams) -> torch.Tensor:
    """``params``' fake quantization as the ONNX graph will compute it: a clamp to the grid ends (where the range is
    narrower than its container), then torch's fake-quant op over the container's range."""
    low, high = container(params)
    scale = torch.as_tensor(params.scale.astype(np.float32), device=x.device)
    zero_point = torch.as_tensor(params.zero_point.astype(np.int32), device=x.device)
    if (params.qmin, params.qmax) != (low, high):
        ends = (np.stack([params.qmin - params.zero_point, params.qmax - params.zero_point]).astype(np.float32)
                * params.scale.astype(np.float32))
        if params.per_channel:
            shape = channel_shape(tuple(x.shape), params.axis)
            x = torch.clamp(x, torch.as_tensor(ends[0].reshape(shape), device=x.device),
                            torch.as_tensor(ends[1].reshape(shape), device=x.device))
        else:
            x = torch.clamp(x, float(ends[0, 0]), float(ends[1, 0]))
    if params.per_channel:
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, params.axis % x.dim(), low, high)
    return torch.fake_quantize_per_tensor_affine(x, scale[0], zero_point[0], low, high)


def check_widths(named_params: Iterable[tuple[str, str, QParams]]) -> bool:
    """Raise for any parameters wider than ONNX holds; return whether some need the 16-bit container (opset 21).

    ``named_params``: ``(owner, key, params)``, owner being a layer name or a whole-graph tensor key."""
    needs16 = False
    for owner, key, params in named_params:
        if params.bits > MAX_BITS:
            raise UnsupportedOpError(
                f"ONNX QuantizeLinear holds at most {MAX_BITS}-bit values. {owner!r} quantizes its {key} with "
                f"{params.bits} bits. Expected quant_bits <= {MAX_BITS} for ONNX export; export the calibration "
                "instead.")
        needs16 = needs16 or params.bits > 8
    return needs16


def _qdq(x: Any, scale: Any, zero_point: Any, quant_min: int, quant_max: int, axis: int | None = None) -> Any:
    onnxscript = require("onnxscript", "ONNX export")
    ir, op = onnxscript.ir, onnxscript.opset21

    dtypes = {(-128, 127): ir.DataType.INT8, (0, 255): ir.DataType.UINT8, (-32768, 32767): ir.DataType.INT16,
              (0, 65535): ir.DataType.UINT16}
    if (quant_min, quant_max) not in dtypes:
        raise UnsupportedOpError(f"ONNX fake quantization: the range [{quant_min}, {quant_max}] is no ONNX integer "
                                 f"type. Expected one of {sorted(dtypes)}.")
    scale = op.Cast(scale, to=ir.DataType.FLOAT)
    zero_point = op.Cast(zero_point, to=dtypes[(quant_min, quant_max)])
    keywords = {} if axis is None else {"axis": axis}
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero_point, **keywords), scale, zero_point, **keywords)


def _per_tensor(self: Any, scale: Any, zero_point: Any, quant_min: int, quant_max: int) -> Any:
    return _qdq(self, scale, zero_point, quant_min, quant_max)


def _per_channel(self: Any, scale: Any, zero_point: Any, axis: int, quant_min: int, quant_max: int) -> Any:
    return _qdq(self, scale, zero_point, quant_min, quant_max, axis)


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: torch's fake-quant ops as QuantizeLinear /
    DequantizeLinear over int8, uint8, int16 or uint16 (opset 21)."""
    aten = torch.ops.aten
    return {aten.fake_quantize_per_tensor_affine.default: _per_tensor,
            aten.fake_quantize_per_tensor_affine.tensor_qparams: _per_tensor,
            aten.fake_quantize_per_channel_affine.default: _per_channel}
