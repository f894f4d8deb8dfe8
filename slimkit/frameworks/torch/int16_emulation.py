"""The arithmetic of LiteRT's 16x8 kernels (int16 activations, int8 weights), for evaluating a fake-quant model of
the ``'tflite_int16x8'`` profile bit for bit.

XNNPACK takes no int16 tensors, so LiteRT runs these files on its builtin kernels, which requantize in fixed point
(:mod:`slimkit.frameworks.torch.fixed_point`: the 32-bit form rounds twice, the 64-bit one rounds the multiplier to
16 bits). Which kernel uses which, each checked against LiteRT on every output of the test models:

- CONV_2D, DEPTHWISE_CONV_2D (a standalone BatchNorm's 1x1 one too): int64 sum plus the int64 bias, the 64-bit form
  per output channel with the multiplier ``double(input_scale) * double(weight_scale) / double(output_scale)``;
- FULLY_CONNECTED: the same sum and multiplier, scaled rounding once (half up) on the int64 product;
- ADD / SUB (the general int16 kernel, ``pot_scale_int16`` off): each input shifted left by 15 and scaled by
  ``input_scale / (2 * max input scale)`` (ADD: rounding once, half up; SUB: the 32-bit form), summed, scaled by
  ``2 * max input scale / (2**15 * output_scale)`` in the 32-bit form;
- MUL: the product of the integers, the 32-bit form with ``a_scale * b_scale / output_scale``;
- MEAN (a global adaptive average pool too): the integer sum, the 32-bit form with ``input_scale / output_scale``
  divided by the count inside the multiplier (TFLite's ``shift = floor(log2(count))`` trick);
- QUANTIZE int16 -> int16: the 32-bit form with ``input_scale / output_scale``;
- LOGISTIC, TANH, SOFTMAX: table kernels (:mod:`slimkit.frameworks.torch.int16_activations`);
- AVERAGE_POOL_2D, CONCATENATION, MAXIMUM, MINIMUM: the int8 kernels' integer steps, inputs requantized as above
  (:func:`slimkit.frameworks.torch.int8_emulation.rescaled` dispatches); MAX_POOL_2D, RESHAPE, PAD only move
  integers.

Example (the general int16 ADD of 1000 steps of 0.001 and 300 steps of 0.002, to an output of scale 0.004):

>>> import torch
>>> from slimkit.compression.quant import fixed_params
>>> a, b, out = fixed_params(0.001, 0, 16), fixed_params(0.002, 0, 16), fixed_params(0.004, 0, 16)
>>> float(add(torch.tensor([1.0]), torch.tensor([0.6]), a, b, out)[0] / 0.004)
400.0
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from slimkit.compression.channels import channel_view
from slimkit.compression.quant import QParams
from slimkit.frameworks.torch import int8_emulation  # first: it loads its own kernels before EMULATED_OPS
from slimkit.frameworks.torch.fixed_point import (
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_once,
    multiply_by_quantized_multiplier_wide,
    quantize_multiplier,
)
from slimkit.frameworks.torch.int8_emulation import (
    INT16_KERNELS,
    Call,
    _f32,
    _per_tensor,
    _RegisteredOps,
    emulates,
    grid_integers,
)

__all__ = ["EMULATED_INT16_OPS", "add", "kernel", "mean", "multiply", "requantize_tensor"]



def _multipliers(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(m)) for m in np.asarray(real, np.float64).reshape(-1)]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def _on_grid(q: torch.Tensor, params: QParams, like: torch.Tensor) -> torch.Tensor:
    """Integers ``q`` (zero point 0) clamped to ``params``'s range, as the fake-quant model holds them."""
    scale, _ = _per_tensor(params, "an int16 output")
    return (torch.clamp(q, params.qmin, params.qmax).float() * torch.tensor(scale)).to(like.dtype)


def _scale64(params: QParams, what: str) -> float:
    return float(_per_tensor(params, what)[0])


def kernel(acc: torch.Tensor, bias_int: torch.Tensor | None, params: dict[str, QParams], channel_dim: int,
           wide: bool) -> torch.Tensor:
    """A 16x8 conv / linear kernel's output from the exact integer sums ``acc`` (float64) and the int64 bias:
    requantized per output channel (``channel_dim``) by the 64-bit form (``wide``: convolutions) or rounding once
    (fully connected), clamped to int16."""
    w_scale = _f32(params["weight"].scale).astype(np.float64)
    real = _scale64(params["input"], "a layer's input") * w_scale / _scale64(params["output"], "a layer's output")
    multiplier, shift = _multipliers(real)
    total = torch.round(acc).long()
    if bias_int is not None:
        total = total + channel_view(torch.round(bias_int).long(), acc.dim(), channel_dim)
    if multiplier.size > 1:
        multiplier_t = channel_view(torch.from_numpy(multiplier), acc.dim(), channel_dim)
        shift_t = channel_view(torch.from_numpy(shift), acc.dim(), channel_dim)
    else:
        multiplier_t, shift_t = torch.tensor(int(multiplier[0])), torch.tensor(int(shift[0]))
    apply = multiply_by_quantized_multiplier_wide if wide else multiply_by_quantized_multiplier_once
    return _on_grid(apply(total, multiplier_t.to(acc.device), shift_t.to(acc.device)), params["output"], acc.float())


def requantize_tensor(x: torch.Tensor, source: QParams, target: QParams) -> torch.Tensor:
    """``x`` (on the int16 grid ``source``) on the int16 grid ``target`` as LiteRT's int16 -> int16 QUANTIZE."""
    multiplier, shift = quantize_multiplier(_scale64(source, "a requantized tensor") /
                                            _scale64(target, "a requantized tensor"))
    q = multiply_by_quantized_multiplier(grid_integers(x, source).long(), multiplier, shift)
    return _on_grid(q, target, x)


def add(a: torch.Tensor, b: torch.Tensor, pa: QParams, pb: QParams, out: QParams, subtract: bool = False) -> \
        torch.Tensor:
    """``a + b`` (``a - b``) as LiteRT's general int16 ADD / SUB (left shift 15; the two kernels scale their inputs
    with different roundings)."""
    sa, sb, so = _scale64(pa, "an add's input"), _scale64(pb, "an add's input"), _scale64(out, "an add's output")
    twice_max = 2.0 * max(sa, sb)
    ma, ea = quantize_multiplier(sa / twice_max)  # below 1: TFLite's QuantizeMultiplierSmallerThanOneExp
    mb, eb = quantize_multiplier(sb / twice_max)
    mo, eo = quantize_multiplier(twice_max / ((1 << 15) * so))
    scale_input = multiply_by_quantized_multiplier if subtract else multiply_by_quantized_multiplier_once
    qa = scale_input(grid_integers(a, pa).long() << 15, ma, ea)
    qb = scale_input(grid_integers(b, pb).long() << 15, mb, eb)
    total = qa - qb if subtract else qa + qb
    return _on_grid(multiply_by_quantized_multiplier(total, mo, eo), out, a)


def multiply(a: torch.Tensor, b: torch.Tensor, pa: QParams, pb: QParams, out: QParams) -> torch.Tensor:
    """``a * b`` as LiteRT's int16 MUL: the integer product, the 32-bit form of ``a_scale * b_scale / out_scale``."""
    real = _scale64(pa, "a product's input") * _scale64(pb, "a product's input") / _scale64(out, "a product's output")
    multiplier, shift = quantize_multiplier(real)
    product = grid_integers(a, pa).long() * grid_integers(b, pb).long()
    return _on_grid(multiply_by_quantized_multiplier(product, multiplier, shift), out, a)


def mean(x: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor], result: torch.Tensor, pin: QParams,
         out: QParams) -> torch.Tensor:
    """A mean over whole axes as LiteRT's int16 MEAN: the integer sum, times ``input_scale / output_scale`` with the
    count folded into the multiplier (``m * 2**k // count``, ``k = floor(log2(count))`` at most 32 and at most
    ``31 + shift``), by the 32-bit form."""
    count = x.numel() // max(result.numel(), 1)
    multiplier, shift = quantize_multiplier(_scale64(pin, "a mean's input") / _scale64(out, "a mean's output"))
    k = min(count.bit_length() - 1, 32, 31 + shift)
    multiplier, shift = (multiplier << k) // count, shift - k
    total = torch.round(reduce(grid_integers(x, pin)) * count).long()
    return _on_grid(multiply_by_quantized_multiplier(total, multiplier, shift), out, x)


def _binary(call: Call) -> bool:
    return len(call.args) == 2 and all(isinstance(a, torch.Tensor) for a in call.args) and not call.kwargs


@emulates("add", "sub", ops=("ADD", "SUB"), bits=16)
def _add_call(call: Call) -> torch.Tensor | None:
    if not _binary(call):
        return None
    return add(call.args[0], call.args[1], *call.inputs, call.params, subtract=call.kind == "sub")


@emulates("mul", ops=("MUL",), bits=16)
def _multiply_call(call: Call) -> torch.Tensor | None:
    return multiply(call.args[0], call.args[1], *call.inputs, call.params) if _binary(call) else None


@emulates("mean", ops=("MEAN",), bits=16)
def _mean_call(call: Call) -> torch.Tensor | None:
    rest = call.args[1:]
    return mean(call.args[0], lambda x: call.func(x, *rest, **call.kwargs), call.out, call.inputs[0], call.params)


@emulates("avg_pool", ops=("AVERAGE_POOL_2D",), bits=16)
def _average_pool_call(call: Call) -> torch.Tensor | None:
    """A global adaptive pool is the file's int16 MEAN; the others the int8 kernel's integer steps on int16."""
    return _mean_call(call) if int8_emulation.is_global_pool(call) else int8_emulation._average_pool_call(call)


# LiteRT's int16 LOGISTIC / TANH / SOFTMAX register themselves
from slimkit.frameworks.torch import int16_activations  # noqa: E402, F401

# a standalone BatchNorm: the file's 16x8 1x1 DEPTHWISE_CONV_2D (int8_emulation.kernel dispatches on the output grid)
emulates("batch_norm", ops=("DEPTHWISE_CONV_2D",), bits=16)(int8_emulation._batch_norm_call)

# the int8 kernels' integer steps on int16 (the input's range; rescaled() requantizes as LiteRT's int16 QUANTIZE)
emulates("cat", "maximum", "minimum", ops=("CONCATENATION", "PACK", "MAXIMUM", "MINIMUM"), bits=16)(
    int8_emulation._rescaled_inputs_call)

EMULATED_INT16_OPS = _RegisteredOps(frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "QUANTIZE"}),
                                    INT16_KERNELS)
"""int16 ops of a file whose arithmetic the emulation computes (LiteRT's 16x8 kernels; read from the registry when
used: complete whatever the import order)."""
