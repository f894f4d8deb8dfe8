"""The arithmetic of the deployed int8 kernels, for evaluating a fake-quant model bit for bit.

A fake-quant model computes each kernel in float32 on values that lie on the integer grids and rounds
the result to the output grid. The int8 kernel of the deployed file accumulates in int32 and requantizes
the sum instead. The two give the same integers except where float32 rounding moves a result across a
rounding tie: a few outputs in a million, but a deep network passes each such step on, so that a
randomly initialised MobileNetV2 at 224x224 ends with half of its logits one step or more apart.
Under :meth:`slimkit.compression.Quantizer.emulate_integer` the model computes what XNNPACK (LiteRT's
default CPU path) computes:

- convolution, depthwise convolution, linear: integer products summed exactly (in float64, exact for
  int8 operands), the int32 bias ``round(bias / float32(input_scale * weight_scale))`` added, then
  ``float32(sum) * float32(float32(input_scale * weight_scale) / output_scale)`` in float32, rounded half
  to even, plus the output zero point, clamped;
- add / subtract: XNNPACK's fixed-point form (per-input multipliers of 21-22 bits, one arithmetic shift);
- multiply: the integer product times ``float32(float32(a_scale * b_scale) / output_scale)``;
- mean over whole axes (global average pooling): the int32 sum times
  ``float32(input_scale / (output_scale * count))``, rounded half to even;
- a layer input quantized with other parameters than the tensor that feeds it (NNI-style ``'input'`` and
  ``'output'`` grids on neighbouring layers: an int8 -> int8 QUANTIZE in the file): XNNPACK's requantization with an
  8-bit fixed-point multiplier, which differs from exact rounding by up to half a step at the ends of the range.

- average pooling (not global): LiteRT's int8 AVERAGE_POOL_2D, integer window sums divided by the count rounding half
  away from zero, then PyTorch's divisor restored in float where it differs (``ceil_mode``, ``count_include_pad``);
- concatenation (and max / min) of inputs on other grids: each input requantized as above first;
- bilinear resize: XNNPACK's int8 kernel, 11-bit weights per axis, integer interpolation rounded half up;
- activations (sigmoid, tanh, hard-swish, leaky ReLU, ReLU / ReLU6, softmax): the kernels of
  :mod:`slimkit.frameworks.torch.int8_activations`.

An add or multiply followed by a ReLU is one kernel with the activation's output parameters, as in the file.
On int16 activations (profile ``'tflite_int16x8'``) the same hooks compute LiteRT's builtin 16x8 kernels instead
(:mod:`slimkit.frameworks.torch.int16_emulation`, registered in :data:`INT16_KERNELS`).
:data:`KERNELS` maps each op kind to its kernel. Every other quantized op already gives the kernel's integers
(reshapes, pooling by max, concatenation with shared parameters), or runs as fake quantization
(:func:`slimkit.converter.emulation.approximate_int8_ops` names such ops per layer).

Example (int32 sums requantized with multiplier 0.25 to an output of scale 0.5 and zero point 3: 2.5 and 3.5
round to even, -225 clamps at -128):

>>> import torch
>>> from slimkit.compression.quant import fixed_params
>>> from slimkit.frameworks.torch.int8_emulation import requantize
>>> out = fixed_params(0.5, 3, 8)
>>> requantize(torch.tensor([10.0, 14.0, -900.0], dtype=torch.float64), torch.tensor(0.25), out).tolist()
[1.0, 2.0, -65.5]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from slimkit.compression.channels import channel_view
from slimkit.compression.quant import QParams
from slimkit.errors import SlimkitError

ARITHMETICS = ("xnnpack",)
"""Integer arithmetics :meth:`~slimkit.compression.Quantizer.emulate_integer` can reproduce."""

INTEGER_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
"""Layers the TFLite converter writes as int8 kernels (CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, FULLY_CONNECTED).
Others (3-D convolutions) run in float between a DEQUANTIZE and a QUANTIZE in the file, as the fake-quant model computes
them, so the emulation leaves them to it."""


def integer_layer(module: torch.nn.Module) -> bool:
    """Whether the file runs ``module`` as one int8 kernel: an :data:`INTEGER_LAYERS` layer, a transposed convolution
    only ungrouped (the converter writes a grouped one as float TRANSPOSE_CONVs per group)."""
    return isinstance(module, INTEGER_LAYERS) and (not isinstance(module, torch.nn.ConvTranspose2d)
                                                   or module.groups == 1)


@dataclass(frozen=True)
class Call:
    """One call of the quantized model that the file runs as an int8 kernel.

    Attributes:
        kind: its op kind (``'add'``, ``'softmax'`` ...).
        func: the torch function called (``torch.add``, ``F.hardswish`` ...).
        args, kwargs: its arguments (tensors on their grids).
        out: its float result (what the fake-quant model computes before rounding to the output grid).
        inputs: the grids of its tensor inputs, in order.
        params: the grid of its output.
    """

    kind: str
    func: Any
    args: tuple
    kwargs: dict
    out: torch.Tensor
    inputs: list
    params: QParams


CONSTANT_OPERANDS = frozenset({"mul", "div", "batch_norm", "linear", "conv1d", "conv2d"})
"""Op kinds whose kernel takes constant operands (tensors without a grid, ``None`` in :attr:`Call.inputs`): a scalar
factor, a BatchNorm's statistics and affine parameters, a functional layer's bias."""

KERNELS: dict[str, tuple[Callable[[Call], torch.Tensor | None], tuple[str, ...]]] = {}
"""Op kind (:data:`slimkit.frameworks.torch.quant_graph.OP_KINDS`) -> (the int8 kernel's result for a :class:`Call`, or
None where the file does not run that kernel; the builtin ops of the file it emulates)."""

INT16_KERNELS: dict[str, tuple[Callable[[Call], torch.Tensor | None], tuple[str, ...]]] = {}
"""The same for int16 activations (LiteRT's 16x8 kernels, :mod:`slimkit.frameworks.torch.int16_emulation`)."""


def emulates(*kinds: str, ops: tuple[str, ...], bits: int = 8) -> Callable:
    """Registers a function as the integer kernel of the graph ops of ``kinds`` (the file's ``ops``) on ``bits``-bit
    activations (8: :data:`KERNELS`, 16: :data:`INT16_KERNELS`)."""
    table = INT16_KERNELS if bits == 16 else KERNELS

    def register(fn: Callable[[Call], torch.Tensor | None]) -> Callable[[Call], torch.Tensor | None]:
        for kind in kinds:
            table[kind] = (fn, ops)
        return fn
    return register


def is_int16(params: QParams) -> bool:
    """Whether ``params`` is a 16-bit activation grid (the file holds int16 there: LiteRT's 16x8 kernels)."""
    return params.qmax > 255


def kernel_of(kind: str, params: QParams) -> Callable[[Call], torch.Tensor | None] | None:
    """The registered kernel of ``kind`` for an output on the grid ``params`` (int16 grids: :data:`INT16_KERNELS`)."""
    entry = (INT16_KERNELS if is_int16(params) else KERNELS).get(kind)
    return None if entry is None else entry[0]

EXACT_OPS = frozenset({"DEQUANTIZE", "RESHAPE", "TRANSPOSE", "MAX_POOL_2D", "CONCATENATION", "PAD", "PADV2",
                       "MIRROR_PAD", "STRIDED_SLICE", "SLICE", "SPLIT", "SPLIT_V", "SQUEEZE", "EXPAND_DIMS", "PACK",
                       "UNPACK", "GATHER", "TILE", "BROADCAST_TO", "RESIZE_NEAREST_NEIGHBOR", "MAXIMUM", "MINIMUM",
                       "REDUCE_MAX", "REDUCE_MIN"})
"""int8 ops that only move or select integers (same parameters in and out): the fake-quant model already gives
their values. An int8 op of a file in neither this set nor :data:`EMULATED_OPS` (one added to the converter's int8
rules later) runs as fake quantization under the emulation: within about a step of the file, not exact."""


def _f32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def _per_tensor(params: QParams, what: str) -> tuple[np.float32, int]:
    if params.per_channel or params.scale.size != 1:
        raise SlimkitError(f"emulate_integer: {what} is quantized per channel; the int8 kernels take one scale "
                           "and zero point for activations. Expected per-tensor activation parameters (every "
                           "built-in profile quantizes activations per tensor).")
    return _f32(params.scale)[0], int(params.zero_point[0])


def grid_integers(x: torch.Tensor, params: QParams) -> torch.Tensor:
    """``q - zero_point`` (float64, exact integers) of a per-tensor fake-quantized ``x``."""
    scale, _ = _per_tensor(params, "an input")
    return torch.round(x.detach().double() / float(scale))


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, params: QParams) -> torch.Tensor:
    """``(clamp(round(float32(acc) * multiplier) + zero_point) - zero_point) * scale`` in float32 (round half to even):
    the int32 sum ``acc`` (float64 holding integers) on the output grid of ``params``, as the fake-quant model holds it.
    """
    scale, zero_point = _per_tensor(params, "an output")
    q = torch.round(acc.float() * multiplier.float()) + zero_point
    q = torch.clamp(q, params.qmin, params.qmax)
    return (q - zero_point) * torch.tensor(scale)


def convert(x: torch.Tensor, source: QParams, target: QParams | None) -> torch.Tensor | None:
    """``x`` (on the grid of ``source``) requantized to the grid of ``target`` as XNNPACK's int8 -> int8 QUANTIZE
    (its ``convert`` kernel): ``(q - zero_in) * m`` with the 8-bit fixed-point multiplier
    ``m = round(256 * float32(in_scale / out_scale))``, plus 128, shifted right by 8 (round half up), plus the output
    zero point, clamped. None where the file holds no such op (same grids) or XNNPACK does not take it (the ratio
    outside [2**-8, 2**7]: LiteRT's own kernel, left to fake quantization)."""
    if target is None:
        return None
    if is_int16(target):  # LiteRT's own int16 QUANTIZE
        from slimkit.frameworks.torch.int16_emulation import requantize_tensor

        same = _per_tensor(source, "a requantized tensor") == _per_tensor(target, "a requantized tensor")
        return None if same else requantize_tensor(x, source, target)
    in_scale, in_zero = _per_tensor(source, "a requantized tensor")
    out_scale, out_zero = _per_tensor(target, "a requantized tensor")
    ratio = np.float32(in_scale / out_scale)
    if (in_scale == out_scale and in_zero == out_zero) or not 2.0 ** -8 <= ratio < 2.0 ** 7:
        return None
    multiplier = int(np.rint(np.float32(256.0) * ratio))
    q = grid_integers(x, source).long()
    out = torch.clamp(((q * multiplier + 128) >> 8) + out_zero, target.qmin, target.qmax)
    return ((out - out_zero).float() * torch.tensor(out_scale)).to(x.dtype)


def kernel(run: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: dict[str, QParams],
           channel_dim: int, linear: bool = False) -> torch.Tensor:
    """A conv / linear int8 kernel: ``run(x, weight)`` (the layer's own op, called on float64 integers) summed exactly,
    plus the int32 bias, requantized per output channel (``channel_dim`` of the result). On int16 activations, LiteRT's
    16x8 kernel (:func:`slimkit.frameworks.torch.int16_emulation.kernel`; ``linear``: a FULLY_CONNECTED).

    ``params``: ``'input'``, ``'weight'`` and ``'output'`` parameters; ``weight`` and ``bias`` as the fake-quant
    model computes with them (on the weight grid; on the int32 grid of ``input_scale * weight_scale``).
    """
    in_scale, _ = _per_tensor(params["input"], "a layer's input")
    w_params = params["weight"]
    w_scale = _f32(w_params.scale)
    device = weight.device
    w_grid = torch.from_numpy(w_scale.astype(np.float64)).to(device)
    if w_params.per_channel:
        w_grid = channel_view(w_grid, weight.dim(), w_params.axis)
    w_int = torch.round(weight.detach().double() / w_grid)
    acc = run(grid_integers(x, params["input"]), w_int)
    product = (in_scale * w_scale).astype(np.float32)  # the bias scale of the file, float32 as TFLite stores it
    bias_int = None if bias is None else \
        torch.round(bias.detach().double() / torch.from_numpy(product.astype(np.float64)).to(device))
    if is_int16(params["output"]):
        from slimkit.frameworks.torch import int16_emulation

        return int16_emulation.kernel(acc, bias_int, params, channel_dim, wide=not linear)
    if bias_int is not None:
        acc = acc + channel_view(bias_int, acc.dim(), channel_dim)
    out_scale, _ = _per_tensor(params["output"], "a layer's output")
    multiplier = torch.from_numpy((product / out_scale).astype(np.float32)).to(device)
    return requantize(acc, channel_view(multiplier, acc.dim(), channel_dim) if multiplier.numel() > 1 else
                      multiplier[0], params["output"])


def add_multipliers(a_ratio: float, b_ratio: float) -> tuple[int, int, int] | None:
    """XNNPACK's fixed-point form of ``qa * a_ratio + qb * b_ratio`` (``ratio = input_scale / output_scale``, float32):
    ``(multiplier_a, multiplier_b, shift)``, the larger multiplier in [2**21, 2**22). None when the larger ratio is
    outside [2**-10, 2**8), which XNNPACK does not take (LiteRT then runs its own ADD kernel)."""
    a, b = np.float32(a_ratio), np.float32(b_ratio)
    largest = max(abs(a), abs(b))
    exponent = int(np.array(largest, np.float32).view(np.uint32) >> 23) - 127
    if not -10 <= exponent <= 7:
        return None
    shift = 20 - exponent

    def multiplier(ratio: np.float32) -> int:
        scaled = (np.array(abs(ratio), np.float32).view(np.uint32) + np.uint32(shift << 23)).view(np.float32)
        value = int(np.rint(scaled))
        return -value if np.signbit(ratio) else value

    return multiplier(a), multiplier(b), shift


def add(a: torch.Tensor, b: torch.Tensor, pa: QParams, pb: QParams, out: QParams, subtract: bool = False) -> \
        torch.Tensor:
    """``a + b`` (``a - b`` with ``subtract``) of two fake-quantized tensors as XNNPACK's int8 ADD / SUBTRACT."""
    a_scale, a_zero = _per_tensor(pa, "an add's input")
    b_scale, b_zero = _per_tensor(pb, "an add's input")
    o_scale, o_zero = _per_tensor(out, "an add's output")
    b_ratio = np.float32(b_scale / o_scale)
    multipliers = add_multipliers(np.float32(a_scale / o_scale), -b_ratio if subtract else b_ratio)
    if multipliers is None:  # LiteRT's own kernel: the exact sum, rounded once
        sign = -1.0 if subtract else 1.0
        exact = grid_integers(a, pa) * float(a_scale) + sign * grid_integers(b, pb) * float(b_scale)
        return requantize(exact, torch.tensor(np.float32(1.0) / o_scale), out).to(a.dtype)
    ma, mb, shift = multipliers
    qa = grid_integers(a, pa).long() + a_zero
    qb = grid_integers(b, pb).long() + b_zero
    bias = (1 << (shift - 1)) - ma * a_zero - mb * b_zero
    q = torch.clamp(((bias + qa * ma + qb * mb) >> shift) + o_zero, out.qmin, out.qmax)
    return ((q - o_zero).float() * torch.tensor(o_scale)).to(a.dtype)


def multiply(a: torch.Tensor, b: torch.Tensor, pa: QParams, pb: QParams, out: QParams) -> torch.Tensor:
    """``a * b`` of two fake-quantized tensors as XNNPACK's int8 MULTIPLY: the integer product times
    ``float32(float32(a_scale * b_scale) / output_scale)``."""
    a_scale, _ = _per_tensor(pa, "a product's input")
    b_scale, _ = _per_tensor(pb, "a product's input")
    o_scale, _ = _per_tensor(out, "a product's output")
    acc = grid_integers(a, pa) * grid_integers(b, pb)
    return requantize(acc, torch.tensor(np.float32(a_scale * b_scale) / o_scale), out).to(a.dtype)


def mean(x: torch.Tensor, reduce: Any, result: torch.Tensor, pin: QParams, out: QParams) -> torch.Tensor:
    """A mean over whole axes (``reduce``: the op applied to a float64 tensor, e.g. the same ``torch.mean`` call; its
    fake-quant ``result`` gives the count) as XNNPACK's int8 MEAN: the exact integer sum times
    ``float32(input_scale / (output_scale * count))``."""
    in_scale, _ = _per_tensor(pin, "a mean's input")
    o_scale, _ = _per_tensor(out, "a mean's output")
    count = x.numel() // max(result.numel(), 1)
    acc = torch.round(reduce(grid_integers(x, pin)) * count)
    multiplier = np.float32(in_scale / (np.float32(o_scale) * np.float32(count)))
    return requantize(acc, torch.tensor(multiplier), out).to(x.dtype)


def multiply_scalar(a: torch.Tensor, factor: float, pa: QParams, out: QParams) -> torch.Tensor:
    """``a * factor`` for a constant ``factor`` as the file's int8 MULTIPLY by an int8 constant holding ``sign(factor)``
    on the grid of scale ``|factor|`` (:func:`slimkit.converter.quant.scalar_operand`): the exact product
    ``q * sign(factor)`` times ``float32(float32(a_scale * |factor|) / output_scale)``."""
    c = np.float32(factor)
    a_scale, _ = _per_tensor(pa, "a product's input")
    o_scale, _ = _per_tensor(out, "a product's output")
    c_scale = np.float32(abs(c)) if c != 0 else np.float32(1.0)
    acc = grid_integers(a, pa) * float(np.sign(c))
    return requantize(acc, torch.tensor(np.float32(a_scale * c_scale) / o_scale), out).to(a.dtype)


def _binary(call: Call) -> bool:
    return len(call.args) == 2 and all(isinstance(a, torch.Tensor) for a in call.args) and not call.kwargs


def _factor(value: Any) -> float | None:
    """A multiplication's constant operand as the file holds it (one value, float32), else None: a number, or a
    tensor of one value that carries no grid (a buffer or parameter, a constant of the file)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(np.float32(value))
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() >= 1:
        flat = value.detach().reshape(-1).float()
        return float(flat[0]) if bool((flat == flat[0]).all()) and bool(torch.isfinite(flat[0])) else None
    return None


def _scalar_product(call: Call, reciprocal: bool = False) -> torch.Tensor | None:
    """``x * c`` / ``c * x`` (``x / c`` with ``reciprocal``: the file multiplies by ``float32(1 / c)``) for a constant
    ``c`` (:func:`_factor`) and an ``x`` on a grid."""
    if len(call.args) != 2 or call.kwargs or not isinstance(call.args[0], torch.Tensor):
        return None
    first = 0 if call.inputs[0] is not None else 1
    if reciprocal and first != 0:
        return None
    x, factor, params = call.args[first], _factor(call.args[1 - first]), call.inputs[0 if first == 0 else -1]
    if factor is None or params is None or not isinstance(x, torch.Tensor) or x.shape != call.out.shape:
        return None
    if reciprocal:
        factor = float(np.float32(1.0) / np.float32(factor)) if factor != 0 else None
    return None if factor is None else multiply_scalar(x, factor, params, call.params)


@emulates("add", "sub", ops=("ADD", "SUB"))
def _add_call(call: Call) -> torch.Tensor | None:
    if not _binary(call):
        return None
    return add(call.args[0], call.args[1], *call.inputs, call.params, subtract=call.kind == "sub")


@emulates("mul", ops=("MUL",))
def _multiply_call(call: Call) -> torch.Tensor | None:
    if _binary(call) and all(p is not None for p in call.inputs):
        return multiply(call.args[0], call.args[1], *call.inputs, call.params)
    return _scalar_product(call)


@emulates("div", ops=("MUL",))
def _divide_call(call: Call) -> torch.Tensor | None:
    """``x / c`` by a constant: the file's int8 MUL by ``float32(1 / c)``; a division by a tensor stays float."""
    return _scalar_product(call, reciprocal=True)


@emulates("linear", "conv1d", "conv2d", ops=("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"))
def _functional_layer_call(call: Call) -> torch.Tensor | None:
    """``F.linear`` / ``F.conv1d`` / ``F.conv2d`` on a weight on its int8 grid (one of the model's parameters,
    quantized by the whole-graph runtime) as the file's int8 kernel: :func:`kernel`, the bias made int32 there."""
    if len(call.args) < 2 or len(call.inputs) < 2 or call.inputs[0] is None or call.inputs[1] is None:
        return None
    x, weight = call.args[0], call.args[1]
    rest, kwargs = list(call.args[2:]), dict(call.kwargs)
    bias = rest.pop(0) if rest else kwargs.pop("bias", None)
    linear = call.kind == "linear"
    params = {"input": call.inputs[0], "weight": call.inputs[1], "output": call.params}
    return kernel(lambda v, w: call.func(v, w, None, *rest, **kwargs), x, weight, bias, params,
                  channel_dim=call.out.dim() - 1 if linear else 1, linear=linear)


@emulates("batch_norm", ops=("DEPTHWISE_CONV_2D",))
def _batch_norm_call(call: Call) -> torch.Tensor | None:
    """A standalone eval-mode BatchNorm (one that folds into no conv; 2-D to 4-D input) as the file's int8 1x1
    DEPTHWISE_CONV_2D: weights ``x * scale + shift``'s ``scale`` per channel on the grid ``|scale| / 127`` (so +-127),
    the int32 bias ``round(shift / float32(input_scale * weight_scale))``, requantized as every conv (with the ReLU
    that follows it fused: ``call.params`` is then the ReLU's grid). The arithmetic of
    :func:`slimkit.converter.ops.norm.batch_norm_affine` and :func:`slimkit.converter.quant.infer_weight_grid`,
    which write the file."""
    import inspect

    from slimkit.converter.ops.norm import batch_norm_affine
    from slimkit.converter.quant import infer_weight_grid

    try:
        bound = inspect.signature(torch.nn.functional.batch_norm).bind(*call.args, **call.kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    a = bound.arguments
    x, params = a["input"], call.inputs[0]
    if a["training"] or x.dim() not in (2, 3, 4) or params is None:
        return None

    def plain(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().float().numpy()

    scale, shift = batch_norm_affine(plain(a["weight"]), plain(a["bias"]), plain(a["running_mean"]),
                                     plain(a["running_var"]), a["eps"])
    grid = infer_weight_grid(scale.reshape(-1, 1, 1, 1), 0) if scale.all() else None
    if grid is None:  # the file keeps it float (MUL, ADD)
        return None
    channels = scale.size
    weight = torch.from_numpy(np.round(scale / grid.scale) * grid.scale).float().reshape(channels, 1, 1, 1)
    w_params = QParams(8, grid.scale, np.zeros(channels, np.int64), -127, 127, axis=0)
    x4 = x.reshape(x.shape[0], channels, 1, -1)  # BatchNorm1d's (N, C, L) / (N, C): the file's 4-D view
    out = kernel(lambda v, w: torch.nn.functional.conv2d(v, w, groups=channels), x4, weight.to(x.device),
                 torch.from_numpy(shift).to(x.device), {"input": params, "weight": w_params, "output": call.params},
                 channel_dim=1)
    return out.reshape(x.shape)


@emulates("matmul", ops=("BATCH_MATMUL",))
def _matmul_call(call: Call) -> torch.Tensor | None:
    """LiteRT's int8 BATCH_MATMUL of two activations (its own kernel: XNNPACK leaves it out of its partitions): the
    exact integer products summed, times ``a_scale * b_scale / output_scale`` (in double) as TFLite's 31-bit
    fixed-point multiplier (``MultiplyByQuantizedMultiplier``), plus the output zero point, clamped."""
    if not _binary(call):
        return None
    from slimkit.frameworks.torch.int8_activations import multiply_by_quantized_multiplier, quantize_multiplier

    (a, b), (pa, pb) = call.args, call.inputs
    a_scale, _ = _per_tensor(pa, "a matrix product's input")
    b_scale, _ = _per_tensor(pb, "a matrix product's input")
    o_scale, o_zero = _per_tensor(call.params, "a matrix product's output")
    acc = torch.round(call.func(grid_integers(a, pa), grid_integers(b, pb))).long()
    fixed, shift = quantize_multiplier(float(a_scale) * float(b_scale) / float(o_scale))
    q = torch.clamp(multiply_by_quantized_multiplier(acc, fixed, shift) + o_zero, call.params.qmin, call.params.qmax)
    return ((q - o_zero).float() * torch.tensor(o_scale)).to(a.dtype)


@emulates("mean", ops=("MEAN",))
def _mean_call(call: Call) -> torch.Tensor | None:
    rest = call.args[1:]
    return mean(call.args[0], lambda x: call.func(x, *rest, **call.kwargs), call.out, call.inputs[0], call.params)




@emulates("sum", ops=("SUM",))
def _sum_call(call: Call) -> torch.Tensor | None:
    """LiteRT's int8 SUM: the int32 sum of the raw integers ``t`` over the axes, then
    ``round(float32(t) * ratio + bias)`` in float32 (``ratio = float32(input_scale / output_scale)``, ``bias =
    -zero_in * ratio * count``), rounded half away from zero, plus the output zero point, clamped."""
    in_scale, in_zero = _per_tensor(call.inputs[0], "a sum's input")
    out_scale, out_zero = _per_tensor(call.params, "a sum's output")
    x = call.args[0]
    count = x.numel() // max(call.out.numel(), 1)
    rest = call.args[1:]
    total = torch.round(call.func(grid_integers(x, call.inputs[0]), *rest, **call.kwargs)) + in_zero * count
    ratio = np.float32(in_scale / out_scale)
    bias = np.float32(np.float32(np.float32(-in_zero) * ratio) * np.float32(count))
    value = total.float() * torch.tensor(ratio) + torch.tensor(bias)
    q = torch.clamp(torch.sign(value) * torch.floor(value.abs() + 0.5) + out_zero, call.params.qmin, call.params.qmax)
    return (q - out_zero).float() * torch.tensor(out_scale)

def rescaled(x: torch.Tensor, source: QParams, target: QParams) -> torch.Tensor | None:
    """``x`` on the grid of ``target``, as the file's int8 -> int8 QUANTIZE puts it there (``x`` itself where the grids
    agree); None where XNNPACK does not take that QUANTIZE."""
    converted = convert(x, source, target)
    if converted is not None:
        return converted
    same = _per_tensor(source, "a requantized tensor") == _per_tensor(target, "a requantized tensor")
    return x if same else None


@emulates("cat", "maximum", "minimum", ops=("CONCATENATION", "PACK", "MAXIMUM", "MINIMUM"))
def _rescaled_inputs_call(call: Call) -> torch.Tensor | None:
    """Concatenation (and elementwise max / min) of inputs on other grids: the file requantizes each input to the
    output's grid (int8 -> int8 QUANTIZE), then moves or compares the integers."""
    listed = isinstance(call.args[0], (list, tuple))
    tensors = list(call.args[0]) if listed else [a for a in call.args if isinstance(a, torch.Tensor)]
    if len(tensors) != len(call.inputs) or (not listed and len(tensors) != len(call.args)):
        return None
    moved = [rescaled(t, p, call.params) for t, p in zip(tensors, call.inputs)]
    if any(m is None for m in moved):
        return None
    args = (moved, *call.args[1:]) if listed else tuple(moved)
    return call.func(*args, **call.kwargs)


def _pool_geometry(call: Call) -> tuple | None:
    """``(kernel, stride, padding, ceil_mode, count_include_pad)`` of a 2-D (or 1-D, as 2-D) average pooling call,
    None for calls the file does not run as one AVERAGE_POOL_2D."""
    name = getattr(call.func, "__name__", "")
    x, size = call.args[0], call.out.shape[2:]
    if name.startswith("adaptive"):
        if any(i % o for i, o in zip(x.shape[2:], size)):
            return None
        kernel = tuple(i // o for i, o in zip(x.shape[2:], size))
        return (kernel, kernel, (0,) * len(kernel), False, True) if len(kernel) == 2 else None
    names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    values = dict(zip(names, (None, None, 0, False, True, None)))
    values.update(zip(names, call.args[1:]))
    values.update(call.kwargs)
    if values["divisor_override"] or values["kernel_size"] is None:
        return None
    dims = x.dim() - 2

    def pair(value: Any, lead: int) -> tuple:  # 1-D pools run as 2-D ones of height 1
        value = tuple(value) if isinstance(value, (list, tuple)) else (value,) * dims
        return (lead,) * (2 - dims) + value

    kernel = pair(values["kernel_size"], 1)
    stride = pair(values["stride"], 1) if values["stride"] else kernel
    padding = pair(values["padding"], 0)
    return kernel, stride, padding, bool(values["ceil_mode"]), bool(values["count_include_pad"])


def is_global_pool(call: Call) -> bool:
    """An adaptive average pool to one element per channel: the converter writes it as a MEAN."""
    return getattr(call.func, "__name__", "").startswith("adaptive") and all(s == 1 for s in call.out.shape[2:])


@emulates("avg_pool", ops=("AVERAGE_POOL_2D",))
def _average_pool_call(call: Call) -> torch.Tensor | None:
    """Average pooling as the file computes it: a global one is a MEAN; the others an int8 AVERAGE_POOL_2D on the
    input's grid (the integer sum of each window, padding holding the zero point, divided by the window's count
    rounding half away from zero), then either PyTorch's divisor restored by a float MUL (``ceil_mode`` overhang,
    ``count_include_pad=False``) and quantized, or requantized to the output grid."""
    if is_global_pool(call):
        return _mean_call(call)
    geometry = _pool_geometry(call)
    if geometry is None:
        return None
    from slimkit.converter.ops.conv import padding_mode  # the converter's own choice of SAME / VALID windows

    kernel, stride, padding, ceil_mode, include_pad = geometry
    pin = call.inputs[0]
    scale, zero = _per_tensor(pin, "an average pool's input")
    x = call.args[0]
    v = grid_integers(x if x.dim() == 4 else x.unsqueeze(-2), pin)
    size = v.shape[2:]
    kernel = tuple(min(k, i + 2 * p) for k, i, p in zip(kernel, size, padding))
    pool = torch.nn.functional.avg_pool2d
    sums = pool(v, kernel, stride, padding, ceil_mode, True, divisor_override=1)
    ones = torch.ones((1, 1, *size), dtype=torch.float64, device=v.device)
    real = pool(ones, kernel, stride, padding, ceil_mode, True, divisor_override=1)
    divisor = torch.round(real / pool(ones, kernel, stride, padding, ceil_mode, include_pad))
    same = not include_pad and padding_mode(size, sums.shape[2:], kernel, stride, (1, 1), padding) == "SAME"
    count = real if same else torch.full_like(real, float(kernel[0] * kernel[1]))
    raw = sums + count * zero
    q = torch.clamp(torch.sign(raw) * torch.div(raw.abs() + torch.div(count, 2, rounding_mode="floor"), count,
                                               rounding_mode="floor"), pin.qmin, pin.qmax) - zero
    pooled = (q.float() * torch.tensor(scale)).reshape(call.out.shape)
    factor = (count / divisor).float().reshape(call.out.shape[2:])
    if same or bool((factor == 1).all()):
        return rescaled(pooled, pin, call.params)
    return pooled * factor  # DEQUANTIZE, MUL by the divisor ratio, QUANTIZE: the output's fake quantization rounds


@emulates("resize", ops=("RESIZE_BILINEAR",))
def _resize_call(call: Call) -> torch.Tensor | None:
    """A bilinear ``F.interpolate`` / ``nn.Upsample`` of a 4-D tensor: :func:`resize_bilinear` on the input's grid,
    then requantized as the file does where the output's grid differs (a nearest resize only moves integers)."""
    mode = call.args[3] if len(call.args) > 3 else call.kwargs.get("mode", "nearest")
    if mode != "bilinear" or call.out.dim() != 4:
        return None
    align_corners = call.args[4] if len(call.args) > 4 else call.kwargs.get("align_corners")
    resized = resize_bilinear(call.args[0], call.inputs[0], tuple(call.out.shape[2:]), bool(align_corners))
    return rescaled(resized, call.inputs[0], call.params)


class _RegisteredOps(Set):
    """A set of file ops read from a kernel registry when used, so that a kernel module imported after this one
    (``int8_activations`` imported first imports this module before registering its kernels) still counts."""

    def __init__(self, fixed: frozenset[str], registry: dict):
        self._fixed, self._registry = fixed, registry

    @classmethod
    def _from_iterable(cls, iterable: Any) -> frozenset[str]:  # | & - give plain frozensets
        return frozenset(iterable)

    def _ops(self) -> frozenset[str]:
        return self._fixed.union(*(ops for _, ops in self._registry.values()))

    def __contains__(self, op: object) -> bool:
        return op in self._ops()

    def __iter__(self) -> Iterator[str]:
        return iter(self._ops())

    def __len__(self) -> int:
        return len(self._ops())


# registers the activation kernels and LiteRT's 16x8 kernels
from slimkit.frameworks.torch import int8_activations, int16_emulation  # noqa: E402, F401

EMULATED_OPS = _RegisteredOps(frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV",
                                         "QUANTIZE"}), KERNELS)
"""int8 ops of a file whose arithmetic the emulation computes: the kernels above, every op of :data:`KERNELS`, and
QUANTIZE int8 -> int8 where XNNPACK takes it (read from the registry when used: complete whatever the import
order)."""


def _bilinear_taps(size_in: int, size_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """XNNPACK's source rows (or columns) and 11-bit weights of a bilinear resize along one axis: the float32 source
    position (``x * (in - 1) / (out - 1)`` with ``align_corners``, else ``(x + 0.5) * in / out - 0.5``, not below
    0), its floor and the next index (clamped), and ``round(2048 * fraction)``."""
    steps = np.arange(size_out, dtype=np.float32)
    if align_corners:
        scale = np.float32((size_in - 1) / (size_out - 1)) if size_out > 1 else np.float32(0.0)
        position = (steps * scale).astype(np.float32)
    else:
        scale = np.float32(np.float32(size_in) / np.float32(size_out))
        position = np.maximum(((steps + np.float32(0.5)) * scale - np.float32(0.5)).astype(np.float32), 0)
    low = np.floor(position).astype(np.int64)
    weight = np.rint((position - low.astype(np.float32)).astype(np.float32) * np.float32(2048.0)).astype(np.int64)
    return low, np.minimum(low + 1, size_in - 1), weight


def resize_bilinear(x: torch.Tensor, params: QParams, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """A bilinear resize (NCHW, to ``size``) of ``x`` on the grid of ``params`` as the file's int8 RESIZE_BILINEAR:
    XNNPACK's 11-bit weights, interpolated along the width then the height in integers, rounded half up (22 bits).
    The result stays on the input's grid."""
    scale, _ = _per_tensor(params, "a resized tensor")
    q = grid_integers(x, params).long()
    top, bottom, vertical = (torch.from_numpy(a).to(x.device) for a in _bilinear_taps(x.shape[-2], size[0],
                                                                                          align_corners))
    left, right, horizontal = (torch.from_numpy(a).to(x.device) for a in _bilinear_taps(x.shape[-1], size[1],
                                                                                          align_corners))

    def row(rows: torch.Tensor) -> torch.Tensor:
        a, b = q[..., rows, :][..., left], q[..., rows, :][..., right]
        return (a << 11) + (b - a) * horizontal

    upper, lower = row(top), row(bottom)
    out = ((upper << 11) + (lower - upper) * vertical[:, None] + (1 << 21)) >> 22
    return (out.float() * torch.tensor(scale)).to(x.dtype)
