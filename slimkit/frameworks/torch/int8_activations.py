"""The int8 activation kernels LiteRT runs, computed exactly (registered with
:func:`slimkit.frameworks.torch.int8_emulation.emulates`).

Which kernel runs was read off LiteRT itself (its XNNPACK delegate against its builtin kernels, every int8 input):

- LOGISTIC, TANH: XNNPACK's 256-entry table, the function computed in float32 on each dequantized input and rounded
  (half to even) to the output grid (LiteRT's builtin table rounds ties away from zero: one entry in thousands
  differs);
- HARD_SWISH: written as a float HARD_SWISH between DEQUANTIZE and QUANTIZE, which XNNPACK runs (it takes no int8
  HARD_SWISH, and each one split the delegated graph): ``x * min(max(x + 3, 0), 6) / 6`` in float32 on each
  dequantized input, rounded half to even to the output grid;
- LEAKY_RELU: XNNPACK's, an 8-bit fixed-point multiplier per sign (the builtin kernel rounds differently);
- GELU (exact and tanh): the builtin kernel's 256-entry table, the function in float32 on each dequantized input,
  rounded half away from zero;
- SOFTMAX: the builtin kernel, a float32 table of ``exp(-input_scale * d)`` for each distance ``d`` to the row's
  maximum, summed along the row in order, each entry times ``1 / (sum * output_scale)`` rounded half away from zero.

Example (a hard-swish of -3.0, 0.5 and 1.0 in float32 steps):

>>> import numpy as np
>>> from slimkit.frameworks.torch.int8_activations import hardswish_f32
>>> hardswish_f32(np.array([-3.0, 0.5, 1.0])).round(4).tolist()
[-0.0, 0.2917, 0.6667]
"""

from __future__ import annotations

import math

import numpy as np
import torch

from slimkit.compression.quant import QParams
from slimkit.frameworks.torch.fixed_point import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
)
from slimkit.frameworks.torch.int8_emulation import Call, _per_tensor, emulates, grid_integers

_INT16 = (-(1 << 15), (1 << 15) - 1)


def _on_grid(q: torch.Tensor, params: QParams, like: torch.Tensor) -> torch.Tensor:
    """Integers ``q`` (zero point included) as the fake-quant model holds them: ``(q - zero_point) * scale``."""
    scale, zero = _per_tensor(params, "an activation's output")
    return ((q - zero).float() * torch.tensor(scale)).to(like.dtype)


def _round_away(x: torch.Tensor) -> torch.Tensor:
    """``std::round``: half away from zero."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _raw(call: Call) -> torch.Tensor:
    """The call's input as int8 integers (zero point included)."""
    return grid_integers(call.args[0], call.inputs[0]).long() + _per_tensor(call.inputs[0], "an input")[1]




@emulates("leaky_relu", ops=("LEAKY_RELU",))
def _leaky_relu_call(call: Call) -> torch.Tensor | None:
    """XNNPACK's int8 leaky ReLU: ``(q - zero_in) * m`` with ``m = round(256 * ratio)`` for the sign's ratio
    (``input_scale / output_scale``, times the slope below zero), plus the output zero point, shifted right by 8
    rounding half up. None for ratios XNNPACK does not take."""
    in_scale, in_zero = _per_tensor(call.inputs[0], "a leaky ReLU's input")
    out_scale, out_zero = _per_tensor(call.params, "a leaky ReLU's output")
    slope = call.kwargs.get("negative_slope", call.args[1] if len(call.args) > 1 else 0.01)
    positive = np.float32(in_scale / out_scale)
    negative = np.float32(positive * np.float32(slope))
    if not 2.0 ** -8 <= positive <= 2.0 ** 7 or not -(2.0 ** 7) <= negative <= 2.0 ** 7 or \
            abs(negative) < 2.0 ** -8 and negative != 0:
        return None
    v = _raw(call) - in_zero
    multiplier = torch.where(v >= 0, int(np.rint(256 * positive)), int(np.rint(256 * negative)))
    q = torch.clamp(((out_zero << 8) + 0x80 + v * multiplier) >> 8, call.params.qmin, call.params.qmax)
    return _on_grid(q, call.params, call.out)


def _table(call: Call, function, half_even: bool = True) -> torch.Tensor:
    """A 256-entry table kernel: ``function`` (float64, rounded to float32) of each dequantized int8 input, rounded
    to the output grid half to even (XNNPACK's tables), else half away from zero (LiteRT's ``LUTPopulate``)."""
    in_scale, in_zero = _per_tensor(call.inputs[0], "an activation's input")
    out_scale, out_zero = _per_tensor(call.params, "an activation's output")
    levels = np.arange(-128, 128)
    dequantized = (in_scale * (levels - in_zero).astype(np.float32)).astype(np.float32)
    values = function(dequantized.astype(np.float64)).astype(np.float32)
    rescaled = torch.from_numpy(values * np.float32(np.float32(1.0) / out_scale))
    table = (torch.round(rescaled) if half_even else _round_away(rescaled)) + out_zero
    table = torch.clamp(table, call.params.qmin, call.params.qmax).to(call.out.device)
    return _on_grid(table[_raw(call) + 128], call.params, call.out)


def hardswish_f32(x: np.ndarray) -> np.ndarray:
    """XNNPACK's float HARD_SWISH in float32 steps: ``x * min(max(x + 3, 0), 6) / 6``."""
    x = x.astype(np.float32)
    return (x * np.clip(x + np.float32(3), np.float32(0), np.float32(6)) / np.float32(6)).astype(np.float64)


@emulates("hardswish", ops=("HARD_SWISH",))
def _hardswish_call(call: Call) -> torch.Tensor | None:
    """The file's float HARD_SWISH between DEQUANTIZE and QUANTIZE: a table of the float32 function, rounded half to
    even (XNNPACK's QUANTIZE)."""
    return _table(call, hardswish_f32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    exp = np.exp(-x).astype(np.float32)  # float32 steps, as the kernel's 1 / (1 + exp(-x))
    return (np.float32(1.0) / (np.float32(1.0) + exp)).astype(np.float64)


@emulates("sigmoid", ops=("LOGISTIC",))
def _sigmoid_call(call: Call) -> torch.Tensor | None:
    return _table(call, _sigmoid)


@emulates("tanh", ops=("TANH",))
def _tanh_call(call: Call) -> torch.Tensor | None:
    return _table(call, np.tanh)


def _gelu(x: np.ndarray) -> np.ndarray:
    """LiteRT's ``GeluTransform`` in float32: ``0.5 * x * erfc(x * -sqrt(1/2))``."""
    x = x.astype(np.float32)
    erfc = np.array([math.erfc(v) for v in (x * np.float32(-math.sqrt(0.5))).astype(np.float64)], np.float32)
    return (np.float32(0.5) * x * erfc).astype(np.float64)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """LiteRT's ``GeluTransformApproximate`` in float32: ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))``."""
    x = x.astype(np.float32)
    inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)
    tanh = np.tanh(inner.astype(np.float64)).astype(np.float32)
    return (np.float32(0.5) * x * (np.float32(1.0) + tanh)).astype(np.float64)


@emulates("gelu", ops=("GELU",))
def _gelu_call(call: Call) -> torch.Tensor | None:
    """LiteRT's int8 GELU (XNNPACK takes no int8 GELU): a 256-entry table of the float32 function, exact or tanh
    approximation, rounded half away from zero."""
    approximate = call.kwargs.get("approximate", call.args[1] if len(call.args) > 1 else "none")
    return _table(call, _gelu_tanh if approximate == "tanh" else _gelu, half_even=False)


_SOFTMAX_GRID = (1.0 / 256, -128)


@emulates("softmax", ops=("SOFTMAX",))
def _softmax_call(call: Call) -> torch.Tensor | None:
    """LiteRT's int8 SOFTMAX (output grid 1/256, -128; otherwise the file keeps it in float)."""
    out_scale, out_zero = _per_tensor(call.params, "a softmax output")
    in_scale, _ = _per_tensor(call.inputs[0], "a softmax input")
    if (float(out_scale), out_zero) != _SOFTMAX_GRID:
        return None
    dim = call.kwargs.get("dim", call.args[1] if len(call.args) > 1 else -1)
    q = _raw(call).movedim(dim, -1)
    distance = q.amax(-1, keepdim=True) - q
    steps = (np.float32(-in_scale) * np.arange(256, dtype=np.float32)).astype(np.float64)
    table = torch.from_numpy(np.exp(steps).astype(np.float32)).to(q.device)
    exp = table[distance]
    total = torch.zeros_like(exp[..., 0])
    for j in range(exp.shape[-1]):  # float32 sums in the kernel's order
        total = total + exp[..., j]
    inverse = torch.tensor(1.0, dtype=torch.float32) / (total * torch.tensor(np.float32(out_scale)))
    prob = _round_away(exp * inverse[..., None]) + out_zero
    q_out = torch.clamp(prob, call.params.qmin, call.params.qmax).movedim(-1, dim)
    return _on_grid(q_out, call.params, call.out)


#: the clamp bounds of the int8 RELU kernels, by PyTorch spelling
_CLAMPS = {"relu": (0.0, None), "relu6": (0.0, 6.0), "hardtanh": (-1.0, 1.0)}


@emulates("relu", "relu6", ops=("RELU", "RELU6", "RELU_N1_TO_1"))
def _relu_call(call: Call) -> torch.Tensor | None:
    """LiteRT's int8 RELU / RELU6 / RELU_N1_TO_1: ``q - zero_in`` rescaled by ``input_scale / output_scale`` (a
    31-bit fixed-point multiplier; exact when the grids agree), plus the output zero point, clamped to the
    activation's bounds on the output grid."""
    name = getattr(call.func, "__name__", "").strip("_")
    lower, upper = _CLAMPS.get(name, (None, None))
    if name == "hardtanh":  # nn.ReLU6 is hardtanh(0, 6); other bounds are no RELU kernel of the file
        bounds = tuple(float(call.kwargs.get(key, call.args[i] if len(call.args) > i else default))
                       for i, (key, default) in enumerate((("min_val", -1.0), ("max_val", 1.0)), start=1))
        lower, upper = bounds if bounds in ((0.0, 6.0), (-1.0, 1.0)) else (None, None)
    if lower is None:
        return None
    in_scale, in_zero = _per_tensor(call.inputs[0], "a ReLU's input")
    out_scale, out_zero = _per_tensor(call.params, "a ReLU's output")
    fixed, shift = quantize_multiplier(np.float32(in_scale / out_scale))
    q = multiply_by_quantized_multiplier(_raw(call) - in_zero, fixed, shift) + out_zero
    low = max(call.params.qmin, out_zero + int(_round_away(torch.tensor(lower / float(out_scale)))))
    high = call.params.qmax if upper is None else \
        min(call.params.qmax, out_zero + int(_round_away(torch.tensor(upper / float(out_scale)))))
    return _on_grid(torch.clamp(q, low, high), call.params, call.out)
