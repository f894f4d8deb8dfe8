"""TFLite's fixed-point requantization (``QuantizeMultiplier``, ``MultiplyByQuantizedMultiplier``) on integer tensors.

LiteRT's builtin kernels scale integer sums by a real multiplier ``m`` given as a 31-bit integer and a power of two.
The installed LiteRT is built without ``TFLITE_SINGLE_ROUNDING`` (read off its 16x8 kernels), so the 32-bit form
rounds twice (gemmlowp's rounding doubling high multiply, then a rounding right shift) and the 64-bit form rounds
the multiplier to 16 bits first; its 16x8 FULLY_CONNECTED and the inputs of its general int16 ADD are scaled
rounding once (:func:`multiply_by_quantized_multiplier_once`).

Example (``m = 0.3`` is ``1288490189 * 2**-32``; 1000 * 0.3 = 300; -5 * 0.3 = -1.5 rounds away from zero in the
32-bit form, and to -2 as well in the 64-bit one, which rounds half up from a multiplier a little above 0.3):

>>> import torch
>>> quantize_multiplier(0.3)
(1288490189, -1)
>>> multiply_by_quantized_multiplier(torch.tensor([1000, -5]), 1288490189, -1).tolist()
[300, -2]
>>> multiply_by_quantized_multiplier_wide(torch.tensor([1000, -5]), 1288490189, -1).tolist()
[300, -2]

A tie (-6 * 0.25, ``m = 2**30``) rounds away from zero in the 32-bit form, up in the form that rounds once:

>>> multiply_by_quantized_multiplier(torch.tensor([-6]), 1 << 30, -1).tolist()
[-2]
>>> multiply_by_quantized_multiplier_once(torch.tensor([-6]), 1 << 30, -1).tolist()
[-1]
"""

from __future__ import annotations

import math
from typing import Any

import torch

_INT32_MIN = -(1 << 31)


def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``multiplier = m * 2**(shift - 31)`` with ``m`` in [2**30, 2**31)."""
    if multiplier == 0:
        return 0, 0
    fraction, shift = math.frexp(float(multiplier))
    fixed = math.floor(fraction * (1 << 31) + 0.5)
    if fixed == 1 << 31:
        fixed, shift = fixed // 2, shift + 1
    return (0, 0) if shift < -31 else (fixed, shift)


def rounding_shift_right(x: torch.Tensor, exponent: Any) -> torch.Tensor:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero (``exponent`` an int or a
    tensor broadcasting against ``x``)."""
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (x < 0).long()
    return (x >> exponent) + ((x & mask) > threshold).long()


def _pair(multiplier: Any, shift: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(multiplier, dtype=torch.int64, device=like.device),
            torch.as_tensor(shift, dtype=torch.int64, device=like.device))


def multiply_by_quantized_multiplier(x: torch.Tensor, multiplier: Any, shift: Any) -> torch.Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier`` on int32 values (double rounding): ``x * 2**max(shift, 0)``,
    gemmlowp's saturating rounding doubling high multiply by ``multiplier``, a rounding right shift by
    ``max(-shift, 0)``. ``multiplier`` and ``shift`` may be tensors broadcasting against ``x`` (per channel)."""
    multiplier, shift = _pair(multiplier, shift, x)
    shifted = x.long() << torch.clamp(shift, min=0)
    product = shifted * multiplier
    nudge = torch.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = torch.div(product + nudge, 1 << 31, rounding_mode="trunc")
    high = torch.where((shifted == _INT32_MIN) & (multiplier == _INT32_MIN), (1 << 31) - 1, high)
    return rounding_shift_right(high, torch.clamp(-shift, min=0))


def multiply_by_quantized_multiplier_once(x: torch.Tensor, multiplier: Any, shift: Any) -> torch.Tensor:
    """``x * multiplier * 2**(shift - 31)`` on the int64 product, rounded once (half up): how LiteRT's general int16
    ADD scales its inputs and its 16x8 FULLY_CONNECTED its sums, read off their outputs (the double-rounding form
    differs on about one ADD output in 100,000; its int16 SUB matches the double-rounding form)."""
    multiplier, shift = _pair(multiplier, shift, x)
    total = 31 - shift
    return (x.long() * multiplier + (1 << (total - 1))) >> total


def multiply_by_quantized_multiplier_wide(x: torch.Tensor, multiplier: Any, shift: Any) -> torch.Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier`` on int64 sums (double-rounding build): the multiplier rounded to 16
    bits (``(m + 2**15) >> 16``, at most ``0x7FFF``), then ``(x * m16 + 2**(14 - shift)) >> (15 - shift)``."""
    multiplier, shift = _pair(multiplier, shift, x)
    reduced = torch.where(multiplier < 0x7FFF0000, (multiplier + (1 << 15)) >> 16, 0x7FFF)
    total = 15 - shift
    return (x.long() * reduced + (1 << (total - 1))) >> total
