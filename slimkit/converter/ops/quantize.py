"""Fake quantization in the captured graph (models quantized by slimkit's quantizers).

Every ``fake_quantize_*`` node carries the calibrated scale and zero point, so the graph itself is
the source of quantization parameters: they go into the converter's one table
(``Lowering.quant_table``, a :class:`slimkit.converter.quant.QuantTable`), keyed by tensor name.

- On activations: QUANTIZE (to int8 / uint8, or int16 under the ``'tflite_int16x8'`` profile, with those
  parameters) + DEQUANTIZE, which reproduces PyTorch's fake quantization (up to round-half-even vs.
  half-away-from-zero on exact ties).
- On weights (constants): folded by PyTorch like any constant; the parameters are kept in
  ``Lowering.weight_quant`` (by the folded tensor) for int8 kernels.

``slimkit.converter.quant.int8_kernels`` and ``slimkit.converter.int8_ops`` then turn the
DEQUANTIZE -> op -> QUANTIZE chains into int8 operators (docs/converter.md, "Quantization").
"""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter.ir import QuantParams
from slimkit.converter.registry import register

FAKE_QUANT = {"aten.fake_quantize_per_tensor_affine.default", "aten.fake_quantize_per_tensor_affine.tensor_qparams",
              "aten.fake_quantize_per_channel_affine.default"}
_TYPES = {(-128, 127): "int8", (0, 255): "uint8", (-32768, 32767): "int16"}


def _values(v):
    return np.atleast_1d(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))


def record_folded(ctx, node, args, result) -> None:
    """Remember the parameters of a fake quantization that constant folding evaluated (weights)."""
    if "per_channel" in str(node.target):
        _, scale, zero, axis = args[:4]
    else:
        _, scale, zero = args[:3]
        axis = 0
    ctx.weight_quant[id(result)] = QuantParams(_values(scale).astype(np.float32), _values(zero).astype(np.int64),
                                               int(axis))


@register("aten.fake_quantize_per_tensor_affine.default", "aten.fake_quantize_per_tensor_affine.tensor_qparams",
          emits=("QUANTIZE", "DEQUANTIZE"))
def fake_quantize_per_tensor(ctx, node, a):
    x = a["self"]
    dtype = _TYPES.get((int(a["quant_min"]), int(a["quant_max"])))
    if dtype is None:
        ctx.fail(f"activation range [{a['quant_min']}, {a['quant_max']}] has no TFLite type; expected int8 "
                 "[-128, 127], uint8 [0, 255] or int16 [-32768, 32767] for activations")
    q = ctx.tensor(x.shape, dtype, perm=x.perm, name=node.name + "_q")
    q.quant = QuantParams(_values(a["scale"]).astype(np.float32), _values(a["zero_point"]).astype(np.int64), 0)
    ctx.quant_table[q.name] = q.quant
    ctx.emit("QUANTIZE", [x], [q])
    out = ctx.tensor(x.shape, "float32", perm=x.perm)
    ctx.emit("DEQUANTIZE", [q], [out])
    return out


@register("aten.fake_quantize_per_channel_affine.default", emits=())
def fake_quantize_per_channel(ctx, node, a):
    ctx.fail("per-channel fake quantization of activations is not supported (weights are)")


def attach_weight_params(ctx, torch_weight, out) -> None:
    """Tag the weight constant of the op producing ``out`` with the weight's recorded fake-quant parameters."""
    params = ctx.weight_quant.get(id(torch_weight))
    op = out.producer
    if params is None or op is None or op.code not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        return
    axis = 3 if op.code == "DEPTHWISE_CONV_2D" else 0
    if params.scale.size > 1 and params.quantized_dimension != 0:
        return
    op.inputs[1].quant_hint = QuantParams(params.scale, params.zero_point, axis)
