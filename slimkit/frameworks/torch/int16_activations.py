"""LiteRT's int16 LOGISTIC, TANH and SOFTMAX kernels (profile ``'tflite_int16x8'``), computed exactly (registered with
:func:`slimkit.frameworks.torch.int8_emulation.emulates` for 16-bit grids).

XNNPACK takes no int16, so LiteRT runs these on its builtin kernels. Read off LiteRT 2.3 on every int16 input:

- LOGISTIC, TANH: the input rescaled to steps of ``1 / (3 * 4096)`` (an integer multiplier ``m = trunc(s * 12288 *
  2**k)``, ``k`` the least shift that brings ``m`` above 16383.5, then ``(q * m + 2**(k-1)) >> k``), then a
  256-entry table of ``sigmoid(i / 24)`` in 0.16 fixed point, linearly interpolated on the absolute value (9
  fractional bits for the logistic; 8 for tanh, ``tanh(x) = 2 sigmoid(2x) - 1``), the sign restored with a bias of
  half a step, shifted back to 15 fractional bits. An input scale within 0.1 % of ``2**-12`` (tanh: also
  ``2**-11``) selects gemmlowp's fixed-point functions instead (:mod:`slimkit.frameworks.torch.gemmlowp16`);
- SOFTMAX: each row's distances to its maximum scaled by the 32-bit fixed-point form of ``s / (10 / 65535)``
  (``[-65535, 0]`` is ``[-10, 0]``), looked up in a 513-entry table of ``exp`` on ``[-10, 0]`` with 7 bits of
  linear interpolation, summed in int32, the sum normalised by its leading zeros and its reciprocal looked up in a
  table of ``1 / (1 + x)`` on ``[0, 1]``, each entry times the reciprocal rounded half up. Both tables come from
  TFLite's table builder: samples of the function in double, rounded half away from zero, each lowered by half the
  error the interpolation makes at the midpoint.

Example (the logistic of -4.0, 0.0 and 2.0 on an input step of 0.001, output steps of ``2**-15``):

>>> import torch
>>> from slimkit.compression.quant import fixed_params
>>> logistic_integers(torch.tensor([-4000, 0, 2000]), fixed_params(0.001, 0, 16)).tolist()
[590, 16384, 28862]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from slimkit.compression.quant import QParams
from slimkit.frameworks.torch import gemmlowp16
from slimkit.frameworks.torch.fixed_point import multiply_by_quantized_multiplier, quantize_multiplier
from slimkit.frameworks.torch.int8_emulation import Call, _per_tensor, emulates, grid_integers

__all__ = ["logistic_integers", "softmax_integers", "tanh_integers"]

_INT16_MIN, _INT16_MAX = -(1 << 15), (1 << 15) - 1


def _round_away(x: np.ndarray) -> np.ndarray:
    """``std::round``: half away from zero."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# entries of TFLite's table one above the nearest integer (read off LiteRT 2.3's int16 TANH at the table's knots: an
# input scale of 1 / 6144 puts input q at 2q / 12288, so q = 128 i reads entry i exactly)
_TABLE_ABOVE_NEAREST = (4, 8, 12, 14, 15, 16, 17, 19, 20, 21, 22, 25, 27, 28, 29, 30, 31, 33, 34, 35, 37, 39, 40, 41,
                        43, 44, 45, 46, 49, 50, 54, 62, 63, 64, 66, 82, 86, 93, 100, 103, 112, 116, 135, 255)


def _sigmoid_table() -> torch.Tensor:
    """TFLite's ``sigmoid_table_uint16``: ``sigmoid(i / 24)`` in 0.16 fixed point for i in [0, 256) (the nearest
    integer but at :data:`_TABLE_ABOVE_NEAREST`, at most 65535)."""
    values = [min(round(65536.0 / (1.0 + math.exp(-i / 24.0))) + (i in _TABLE_ABOVE_NEAREST), 65535)
              for i in range(256)]
    return torch.tensor(values, dtype=torch.int64)


_SIGMOID = _sigmoid_table()


def _log2_is_integer(scale: float, exponents: tuple[int, ...]) -> bool:
    """TFLite's ``CheckedLog2`` in float32 (the fractional part of log2 below 1e-3) at one of ``exponents``."""
    log2 = np.float32(np.float32(math.log(np.float32(scale))) * np.float32(1.0 / np.float32(math.log(2.0))))
    rounded = float(_round_away(np.array(log2)))
    return abs(float(log2) - rounded) < 1e-3 and int(rounded) in exponents


def _table_input(q: torch.Tensor, scale: float) -> torch.Tensor:
    """The input integers ``q`` (input step ``scale``) rescaled to steps of ``1 / (3 * 4096)``."""
    multiplier, shift = scale * 4096.0 * 3.0, 0
    while multiplier <= 32767.0 / 2.0 and shift <= 30:
        shift, multiplier = shift + 1, multiplier * 2.0
    rounding = 1 << (shift - 1) if shift > 0 else 0
    return (q.long() * int(multiplier) + rounding) >> shift


def _interpolate(x: torch.Tensor, bits: int, saturated: int) -> torch.Tensor:
    """The sigmoid table at ``|x|`` with ``bits`` fractional bits, interpolated (``saturated`` past its end)."""
    a = x.abs()
    index = a >> bits
    low = _SIGMOID.to(x.device)[torch.clamp(index, max=254)]
    high = _SIGMOID.to(x.device)[torch.clamp(index + 1, max=255)]
    value = (low << bits) + (a & ((1 << bits) - 1)) * (high - low)
    return torch.where(index >= 255, saturated, value)


def logistic_integers(q: torch.Tensor, params: QParams) -> torch.Tensor:
    """LiteRT's int16 LOGISTIC of the integers ``q`` on the input grid ``params`` (output steps of ``2**-15``)."""
    scale = float(_per_tensor(params, "a logistic's input")[0])
    if _log2_is_integer(scale, (-12,)):
        return gemmlowp16.logistic(q)
    x = _table_input(q, scale)
    value = _interpolate(x, 9, 0x7FFF << 10)
    value = torch.where(x >= 0, value + (1 << 9), (1 << 25) - value + (1 << 9) - 1)
    return value >> 10


def tanh_integers(q: torch.Tensor, params: QParams) -> torch.Tensor:
    """LiteRT's int16 TANH of the integers ``q`` on the input grid ``params`` (output steps of ``2**-15``)."""
    scale = float(_per_tensor(params, "a tanh's input")[0])
    if _log2_is_integer(scale, (-12, -11)):  # 2**-11: the input doubled (saturating) onto 2**-12
        return gemmlowp16.tanh(q if _log2_is_integer(scale, (-12,)) else torch.clamp(q.long() * 2, -32768, 32767))
    x = _table_input(q, scale)
    value = _interpolate(x, 8, 0xFFFF << 8)
    value = torch.where(x >= 0, value - (1 << 23) + (1 << 7), -value + (1 << 23) + (1 << 7) - 1)
    return value >> 8


def _lut(function: Callable[[float], float], input_scale: float, input_zero: int) -> torch.Tensor:
    """TFLite's 513-entry int16 table of ``function`` (double) over the int16 input range of ``input_scale`` /
    ``input_zero``, on the output grid ``2 / 65535`` (zero point 0)."""
    output_scale = 2.0 / 65535
    low, high = input_scale * (_INT16_MIN - input_zero), input_scale * (_INT16_MAX - input_zero)
    inverse = 65536.0 / (output_scale * _INT16_MAX - output_scale * _INT16_MIN)
    step = (high - low) / 512
    table = []
    for i in range(512):
        value = float(_round_away(np.array(function(low + i * step) * inverse)))
        interpolated = _round_away(np.array((function(low + (i + 1) * step) * inverse + value) / 2))
        midpoint = _round_away(np.array(function(low + i * step + step / 2) * inverse))
        table.append(value - float(_round_away(np.array((interpolated - midpoint) / 2))))
    table.append(float(_round_away(np.array(function(high) * inverse))))
    return torch.tensor(np.clip(table, _INT16_MIN, _INT16_MAX), dtype=torch.int64)


_EXP = _lut(math.exp, 10.0 / 65535, _INT16_MAX)
_RECIPROCAL = _lut(lambda x: 1.0 / (1.0 + x), 1.0 / 65535, _INT16_MIN)


def _lookup(value: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """TFLite's ``LUTLookup`` on int16 ``value``: the entry of its top 9 bits, interpolated by its low 7 bits."""
    index = 256 + (value >> 7)
    table = table.to(value.device)
    base = table[index]
    return base + (((table[index + 1] - base) * (value & 0x7F) + 64) >> 7)


def softmax_integers(q: torch.Tensor, params: QParams, dim: int = -1) -> torch.Tensor:
    """LiteRT's int16 SOFTMAX (beta 1) of the integers ``q`` along ``dim`` (output steps of ``2**-15``)."""
    multiplier, shift = quantize_multiplier(float(_per_tensor(params, "a softmax input")[0]) / (10.0 / 65535.0))
    q = q.long().movedim(dim, -1)
    scaled = multiply_by_quantized_multiplier(q - q.amax(-1, keepdim=True), multiplier, shift)
    exp = _lookup(torch.clamp(scaled + _INT16_MAX, _INT16_MIN, _INT16_MAX), _EXP)
    total = exp.sum(-1, keepdim=True)
    headroom = 32 - torch.floor(torch.log2(total.double())).long() - 1  # leading zeros of a positive int32
    shifted = ((total << (headroom - 1)) + (1 << 13)) >> 14
    reciprocal = _lookup(torch.clamp(shifted - ((1 << 15) + (1 << 16)), _INT16_MIN, _INT16_MAX), _RECIPROCAL)
    right = 31 - headroom
    out = (exp * reciprocal + (1 << (right - 1))) >> right
    return torch.clamp(out, 0, _INT16_MAX).movedim(-1, dim)


def _on_output(q: torch.Tensor, call: Call) -> torch.Tensor:
    return (q.float() * float(_per_tensor(call.params, "an output")[0])).to(call.out.dtype)


def _fixed_output(call: Call) -> bool:
    """The output grid LiteRT's int16 kernels require (``2**-15``, zero point 0); others are not written as one."""
    scale, zero = _per_tensor(call.params, "an activation's output")
    return float(scale) == 2.0 ** -15 and zero == 0


@emulates("sigmoid", ops=("LOGISTIC",), bits=16)
def _logistic_call(call: Call) -> torch.Tensor | None:
    if not _fixed_output(call):
        return None
    return _on_output(logistic_integers(grid_integers(call.args[0], call.inputs[0]), call.inputs[0]), call)


@emulates("tanh", ops=("TANH",), bits=16)
def _tanh_call(call: Call) -> torch.Tensor | None:
    if not _fixed_output(call):
        return None
    return _on_output(tanh_integers(grid_integers(call.args[0], call.inputs[0]), call.inputs[0]), call)


@emulates("softmax", ops=("SOFTMAX",), bits=16)
def _softmax_call(call: Call) -> torch.Tensor | None:
    if not _fixed_output(call):
        return None
    dim = call.kwargs.get("dim", call.args[1] if len(call.args) > 1 else -1)
    return _on_output(softmax_integers(grid_integers(call.args[0], call.inputs[0]), call.inputs[0], dim), call)
