"""gemmlowp's 16-bit fixed-point logistic and tanh (``gemmlowp::logistic`` / ``gemmlowp::tanh`` on
``FixedPoint<int16_t, 3>``): the kernels LiteRT runs for an int16 LOGISTIC / TANH whose input scale is a power of two
(``2**-12``; tanh also ``2**-11``, the input doubled first), output in steps of ``2**-15``.

Integers are held in int64 tensors with int16 values; sums wrap as int16 does, products are gemmlowp's saturating
rounding doubling high multiply, and gemmlowp's 32-bit constants are rounded to 16 bits (``RoundingDivideByPOT(c,
16)``). Checked against LiteRT 2.3 on all 65,536 int16 inputs (tests/converter/test_int16x8_activations.py).

Example (0.5, 0 and -1.0 on the input grid ``2**-12``: 2048, 0 and -4096):

>>> import torch
>>> logistic(torch.tensor([2048, 0, -4096])).tolist()
[20400, 16384, 8815]
"""

from __future__ import annotations

import torch

from slimkit.frameworks.torch.fixed_point import rounding_shift_right

__all__ = ["logistic", "tanh"]

_ONE = (1 << 15) - 1  # a FixedPoint with no integer bits saturates 1.0


def _wrap(x: torch.Tensor) -> torch.Tensor:
    return ((x + (1 << 15)) & 0xFFFF) - (1 << 15)


def _high_mul(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    """``SaturatingRoundingDoublingHighMul`` on int16."""
    b = torch.as_tensor(b, dtype=torch.int64, device=a.device)
    product = a * b
    result = torch.div(product + torch.where(product >= 0, 1 << 14, 1 - (1 << 14)), 1 << 15, rounding_mode="trunc")
    return torch.where((a == -(1 << 15)) & (b == -(1 << 15)), _ONE, result)


def _by_pot(x: torch.Tensor, exponent: int) -> torch.Tensor:
    """``SaturatingRoundingMultiplyByPOT``: a saturating left shift, or a rounding right shift."""
    if exponent >= 0:
        return torch.clamp(x << exponent, -(1 << 15), _ONE)
    return rounding_shift_right(x, -exponent)


def _constant(raw32: int) -> int:
    """A gemmlowp constant given as a 32-bit raw value, on 16 bits."""
    return int(rounding_shift_right(torch.tensor(raw32), 16))


def _exp_near_zero(a: torch.Tensor) -> torch.Tensor:
    """``exp`` on [-1/4, 0): a Taylor expansion around -1/8 (no integer bits in and out)."""
    constant, third = _constant(1895147668), _constant(715827883)  # exp(-1/8), 1/3
    x = _wrap(a + (1 << 12))
    x2 = _high_mul(x, x)
    x3, x4 = _high_mul(x2, x), _high_mul(x2, x2)
    tail = _by_pot(_wrap(_high_mul(_wrap(_by_pot(x4, -2) + x3), third) + x2), -1)
    return torch.clamp(constant + _high_mul(torch.full_like(a, constant), _wrap(x + tail)), -(1 << 15), _ONE)


# exp(-2**k) for k = -2 .. 4, as gemmlowp's 32-bit raw values
_EXP_POWERS = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401),
               (4, 242))


def _exp_on_negative(a: torch.Tensor, integer_bits: int) -> torch.Tensor:
    """``exp_on_negative_values`` of ``a`` (``integer_bits`` integer bits) to no integer bits."""
    fraction = 15 - integer_bits
    quarter = 1 << (fraction - 2)
    shifted = _wrap((a & (quarter - 1)) - quarter)
    result = _exp_near_zero(_by_pot(shifted, integer_bits))
    remainder = _wrap(shifted - a)
    for exponent, raw in _EXP_POWERS:
        if integer_bits > exponent:
            hit = (remainder & (1 << (fraction + exponent))) != 0
            result = torch.where(hit, _high_mul(result, _constant(raw)), result)
    return torch.where(a == 0, _ONE, result)


def _newton_reciprocal(a: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + a)`` for a in [0, 1] with two integer bits: three Newton-Raphson steps from 48/17 - 32/17 d."""
    half = a + _ONE
    half = torch.div(half + torch.where(half >= 0, 1, -1), 2, rounding_mode="trunc")  # RoundingHalfSum
    x = _wrap(_constant(1515870810) + _high_mul(half, _constant(-1010580540)))
    for _ in range(3):
        x = _wrap(x + _by_pot(_high_mul(x, _wrap((1 << 13) - _high_mul(half, x))), 2))
    return x


def logistic(q: torch.Tensor) -> torch.Tensor:
    """``gemmlowp::logistic`` of raw ``FixedPoint<int16_t, 3>`` values ``q`` (int64 tensor of int16 values)."""
    q = q.long()
    positive = q > 0
    magnitude = torch.where(positive, q, _wrap(-q))
    value = _by_pot(_newton_reciprocal(_exp_on_negative(_wrap(-magnitude), 3)), 1)
    return torch.where(q == 0, 1 << 14, torch.where(positive, value, _wrap(_ONE - value)))


def tanh(q: torch.Tensor) -> torch.Tensor:
    """``gemmlowp::tanh`` of raw ``FixedPoint<int16_t, 3>`` values ``q``."""
    q = q.long()
    negative = q < 0
    value = _by_pot(_wrap(_newton_reciprocal(_exp_on_negative(torch.where(negative, q, _wrap(-q)), 4)) - (1 << 13)),
                    2)
    return torch.where(q == 0, 0, torch.where(negative, _wrap(-value), value))
