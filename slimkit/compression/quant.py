"""Quantization arithmetic shared by every quantizer: types, ranges, scales and zero points.

Everything here is framework-neutral: parameters are numpy arrays, and the few tensor
operations the formulas need come from the model adapter's ``quant_ops`` seam
(:class:`QuantOps`).

Affine quantization maps a real ``x`` to ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``
and back to ``(q - zero_point) * scale``.

Example:

>>> import numpy as np
>>> from slimkit.compression.quant import qrange, affine_params, Scheme
>>> qrange(8, signed=True, narrow=True)
(-127, 127)
>>> p = affine_params(np.array([-1.0]), np.array([3.0]), 8, Scheme(symmetric=False, signed=True))
>>> float(p.scale[0]), int(p.zero_point[0]), p.qmin, p.qmax
(0.01568627450980392, -64, -128, 127)
>>> p = affine_params(np.array([-2.0, 0.0]), np.array([1.0, 0.5]), 8, Scheme(symmetric=True, narrow=True))
>>> (p.scale * 127).round(6).tolist(), p.zero_point.tolist()
([2.0, 0.5], [0, 0])
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from slimkit.compression.channels import ChannelAxis, channel_shape


class QuantType(str, enum.Enum):
    """What a quantization applies to. The values are the ``quant_types`` config strings."""

    QUANT_INPUT = "input"
    QUANT_WEIGHT = "weight"
    QUANT_OUTPUT = "output"

    def __str__(self) -> str:
        return self.value


QUANT_TYPE_NAMES = tuple(t.value for t in QuantType)


class QuantOps(Protocol):
    """The tensor operations the built-in quantization formulas need; each framework adapter
    provides one object with these methods (``adapter.quant_ops``). Tensors are native tensors;
    ``params`` is a :class:`QParams`.

    - ``fake_quant(x, params)``: quantize-dequantize with ``params`` (per-tensor, or per-channel
      along ``params.axis``); gradient: straight-through inside ``[qmin, qmax]``, zero outside.
    - ``straight_through(x, forward, backward)``: ``forward(x)`` in the forward pass (not
      differentiated); ``backward(x, grad_output)`` gives the gradient.
    - ``round_ste(x)``, ``sign_ste(x)`` (sign with sign(0) = 1): straight-through gradient.
    - ``clamp(x, lo, hi)``, ``tanh(x)``, ``abs_max(x)`` (a scalar tensor).
    - ``min_max(x, axis=None)``: numpy ``(min, max)``; per-channel along ``axis`` if given.
    - ``histogram(x, bins, hi, skip_zeros=False)``: numpy counts of ``|x|`` over ``[0, hi]`` (exact zeros
      left out with ``skip_zeros``).
    - ``clip_grad(x, grad, params)``: ``grad`` zeroed where ``x`` quantizes outside ``[qmin, qmax]``.
    - ``zero_grad_where_abs_above(x, grad, limit)``.
    - ``broadcastable(params, like)``: scale and zero point as native tensors broadcasting against ``like``.
    """

    def fake_quant(self, x: Any, params: QParams) -> Any: ...
    def straight_through(self, x: Any, forward: Any, backward: Any) -> Any: ...
    def round_ste(self, x: Any) -> Any: ...
    def sign_ste(self, x: Any) -> Any: ...
    def clamp(self, x: Any, lo: float, hi: float) -> Any: ...
    def tanh(self, x: Any) -> Any: ...
    def abs_max(self, x: Any) -> Any: ...
    def min_max(self, x: Any, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]: ...
    def histogram(self, x: Any, bins: int, hi: float, skip_zeros: bool = False) -> np.ndarray: ...
    def clip_grad(self, x: Any, grad: Any, params: QParams) -> Any: ...
    def zero_grad_where_abs_above(self, x: Any, grad: Any, limit: float) -> Any: ...
    def broadcastable(self, params: QParams, like: Any) -> tuple[Any, Any]: ...


class QuantGrad:
    """The gradient of a quantization. Override :meth:`quant_backward` and assign the class to
    ``quantizer.quant_grad`` for a custom gradient.

    The default is the straight-through estimator: the gradient passes unchanged, except that
    where the quantization parameters are known it is zeroed for values quantized outside
    ``[qmin, qmax]`` (as ``torch.fake_quantize_per_tensor_affine`` does).
    """

    @staticmethod
    def quant_backward(tensor: Any, grad_output: Any, quant_type: QuantType, **kwargs: Any) -> Any:
        """Return the gradient w.r.t. ``tensor`` given ``grad_output``.

        Keyword arguments (when known): ``scale``, ``zero_point`` (native tensors broadcasting against
        ``tensor``), ``qmin``, ``qmax`` (ints), ``params`` (:class:`QParams`) and ``ops`` (the framework's
        :class:`QuantOps`).
        """
        params, ops = kwargs.get("params"), kwargs.get("ops")
        if params is None or ops is None:
            return grad_output
        return ops.clip_grad(tensor, grad_output, params)


def qrange(bits: int, signed: bool = True, narrow: bool = False) -> tuple[int, int]:
    """Integer range of ``bits``-bit values; ``narrow`` drops the most negative (TFLite weights)."""
    if signed:
        return -(2 ** (bits - 1)) + int(narrow and bits > 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


@dataclass(frozen=True)
class Scheme:
    """How one kind of tensor is quantized under a profile.

    Attributes:
        symmetric: zero point fixed (0 if signed, mid-range if unsigned); range ``±max|x|``.
        per_channel: one scale per output channel (weights).
        signed: int8-style range (else uint8-style).
        narrow: drop the most negative value (``[-127, 127]``).
        pow2: round scales up to a power of two.
    """

    symmetric: bool = False
    per_channel: bool = False
    signed: bool = True
    narrow: bool = False
    pow2: bool = False


@dataclass
class QParams:
    """Quantization parameters of one tensor. ``scale``/``zero_point`` are 1-D numpy arrays
    (length 1 per-tensor, one per channel along ``axis`` per-channel)."""

    bits: int
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    axis: ChannelAxis | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    _native: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def as_dict(self, prefix: str) -> dict[str, Any]:
        """Calibration-file entries ``{prefix}_bits``, ``_scale``, ``_zero_point``, ... (plain Python)."""
        def plain(array: np.ndarray | None) -> Any:
            if array is None:
                return None
            values = array.tolist()
            return values if self.per_channel else values[0]

        entry = {f"{prefix}_bits": self.bits, f"{prefix}_scale": plain(self.scale.astype(np.float64)),
                 f"{prefix}_zero_point": plain(self.zero_point.astype(np.int64)),
                 f"{prefix}_qmin": self.qmin, f"{prefix}_qmax": self.qmax}
        if self.per_channel:
            entry[f"{prefix}_axis"] = self.axis
        if self.min is not None:
            entry[f"tracked_min_{prefix}"] = plain(self.min.astype(np.float64))
            entry[f"tracked_max_{prefix}"] = plain(self.max.astype(np.float64))
        return entry

    @classmethod
    def from_dict(cls, entry: dict[str, Any], prefix: str) -> QParams:
        axis = entry.get(f"{prefix}_axis")
        if isinstance(axis, list):  # a multi-axis channel (see slimkit.compression.channels) read from JSON
            axis = tuple(axis)

        def array(value: Any, dtype: Any) -> np.ndarray | None:
            return None if value is None else np.atleast_1d(np.asarray(value, dtype=dtype))

        return cls(int(entry[f"{prefix}_bits"]), array(entry[f"{prefix}_scale"], np.float64),
                   array(entry[f"{prefix}_zero_point"], np.int64), int(entry[f"{prefix}_qmin"]),
                   int(entry[f"{prefix}_qmax"]), axis, array(entry.get(f"tracked_min_{prefix}"), np.float64),
                   array(entry.get(f"tracked_max_{prefix}"), np.float64))


def _pow2(scale: np.ndarray) -> np.ndarray:
    return np.exp2(np.ceil(np.log2(scale)))


def affine_params(lo: np.ndarray, hi: np.ndarray, bits: int, scheme: Scheme, axis: int | None = None,
                  min_scale: float = 0.0) -> QParams:
    """Scale and zero point covering ``[lo, hi]`` (arrays, per channel or length 1) under ``scheme``.

    The range is widened to include 0 so that 0 is exactly representable (TFLite's nudging);
    symmetric schemes use ``scale = 2 max|x| / (qmax - qmin)`` (``max|x| / 127`` for narrow int8).
    ``min_scale``: a floor on the scale (the profile's ``min_activation_scale``; a layer input's, so that its int32
    bias fits: see :func:`bias_scale_floor`), also the scale of an all-zero range (1.0 without a floor).
    """
    lo = np.minimum(np.asarray(lo, dtype=np.float64).reshape(-1), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64).reshape(-1), 0.0)
    qmin, qmax = qrange(bits, scheme.signed, scheme.narrow)
    empty = min_scale if min_scale > 0 else 1.0  # the scale of an all-zero range
    if scheme.symmetric:
        amax = np.maximum(-lo, hi)
        scale = 2.0 * amax / max(qmax - qmin, 1)
        if scheme.pow2:
            scale = np.where(scale > 0, _pow2(np.where(scale > 0, scale, 1.0)), scale)
        scale = np.maximum(np.where(scale > 0, scale, empty), min_scale)
        zero_point = np.full(scale.shape, 0 if scheme.signed else (qmin + qmax + 1) // 2, dtype=np.int64)
    else:
        scale = (hi - lo) / max(qmax - qmin, 1)
        if scheme.pow2:
            scale = np.where(scale > 0, _pow2(np.where(scale > 0, scale, 1.0)), scale)
        scale = np.maximum(np.where(scale > 0, scale, empty), min_scale)
        zero_point = np.minimum(np.maximum(np.round(qmin - lo / scale), qmin), qmax).astype(np.int64)  # np.clip, faster
    return QParams(bits, scale, zero_point, qmin, qmax, axis, lo, hi)


def fixed_params(scale: float, zero_point: int, bits: int, signed: bool = True) -> QParams:
    """Parameters fixed by the target (e.g. TFLite softmax output: scale 1/256, zero point -128)."""
    qmin, qmax = qrange(bits, signed)
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    return QParams(bits, np.array([scale]), np.array([zero_point], dtype=np.int64), qmin, qmax, None,
                   np.array([lo]), np.array([hi]))


def fake_quant_numpy(x: np.ndarray, params: QParams) -> np.ndarray:
    """Reference quantize-dequantize in numpy (round half to even, as the kernels do)."""
    x = np.asarray(x, dtype=np.float64)
    scale, zero_point = params.scale, params.zero_point
    if params.per_channel:
        shape = channel_shape(x.shape, params.axis)
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    q = np.clip(np.round(x / scale) + zero_point, params.qmin, params.qmax)
    return (q - zero_point) * scale


@dataclass(frozen=True)
class GridBounds:
    """Per-tensor affine parameters as float32 numbers for a clamp-first fake quantization: for every float32
    ``x``, ``round(clamp(x, lo, hi) * inverse) * scale`` (float32 arithmetic, round half to even) equals
    ``(clamp(round(x * inverse) + zero_point, qmin, qmax) - zero_point) * scale``, the fake-quant kernels' formula.

    Attributes:
        inverse: ``float32(1 / float32(scale))``.
        scale: ``float32(scale)``.
        lo: the smallest float32 ``x`` with ``round(x * inverse) >= qmin - zero_point``.
        hi: the largest float32 ``x`` with ``round(x * inverse) <= qmax - zero_point``.
        below: the float32 just below ``lo``; ``above``: the float32 just above ``hi``.
    """

    inverse: float
    scale: float
    lo: float
    hi: float
    below: float
    above: float


def _grid_index(x: np.float32, inverse: np.float32) -> np.float32:
    return np.rint(x * inverse)  # float32 product, rounded half to even


def _first_at_least(inverse: np.float32, target: int) -> np.float32:
    """The smallest float32 ``x`` with ``round(x * inverse) >= target`` (``x * inverse`` rounds monotonically, so
    the float32 nearest the real boundary ``(target - 0.5) / inverse`` is a few steps away at most)."""
    x = np.float32((target - 0.5) / float(inverse))
    down, up = np.float32(-np.inf), np.float32(np.inf)
    while _grid_index(x, inverse) >= target:
        x = np.nextafter(x, down)
    while _grid_index(x, inverse) < target:
        x = np.nextafter(x, up)
    return x


def grid_bounds(params: QParams) -> GridBounds | None:
    """:class:`GridBounds` of per-tensor ``params``; None where float32 cannot express them (a scale so small that
    its inverse overflows, or so large that neighbouring float32 values skip an integer step).

    >>> import numpy as np
    >>> b = grid_bounds(affine_params(np.array([-1.0]), np.array([1.0]), 4, Scheme(symmetric=True, narrow=True)))
    >>> round(b.lo / b.scale, 4), round(b.hi / b.scale, 4)
    (-7.5, 7.5)
    """
    scale = np.float32(params.scale[0])
    with np.errstate(over="ignore", divide="ignore"):
        inverse = np.float32(1.0) / scale
        if not (np.isfinite(inverse) and inverse > 0):
            return None
        low, high = params.qmin - int(params.zero_point[0]), params.qmax - int(params.zero_point[0])
        lo = _first_at_least(inverse, low)
        hi = np.nextafter(_first_at_least(inverse, high + 1), np.float32(-np.inf))
        if _grid_index(lo, inverse) != low or _grid_index(hi, inverse) != high:
            return None
    return GridBounds(float(inverse), float(scale), float(lo), float(hi),
                      float(np.nextafter(lo, np.float32(-np.inf))), float(np.nextafter(hi, np.float32(np.inf))))


def bias_scale_floor(bias: np.ndarray, weight_scale: np.ndarray, bits: int = 32) -> float:
    """The smallest input scale at which ``round(bias / (input_scale * weight_scale))`` takes at most half of the
    ``bits``-bit range on every channel: the other half is left to the kernel's sum of int8 products (and the
    zero-point correction XNNPACK folds into the bias), which is added to the bias in the same int32 accumulator.
    Fewer scales than biases (a grouped transposed conv: its weight ``(in, out / groups, ...)`` holds one scale per
    output channel of a group) repeat group after group.

    >>> bias_scale_floor(np.array([50.0, -20.0]), np.array([1e-3, 1e-4]), bits=32) == 20.0 / (1e-4 * 2 ** 30)
    True
    """
    bias = np.abs(np.asarray(bias, np.float64).reshape(-1))
    ratio = bias / (np.resize(np.asarray(weight_scale, np.float64).reshape(-1), bias.shape) * 2.0 ** (bits - 2))
    return float(ratio.max()) if ratio.size else 0.0


def floor_weight_scales(weight: QParams, bias: np.ndarray, input_scale: float, bits: int = 32) -> QParams:
    """Per-channel weight parameters whose every channel's bias, on the grid ``input_scale * weight_scale``, takes at
    most half of the ``bits``-bit range: a channel whose weights are nearly zero (a BatchNorm with a vanishing
    ``gamma`` folded in) and whose bias is not gets a larger weight scale (its weights round to zero, as they
    nearly are) instead of a floor on the whole layer's input scale (:func:`bias_scale_floor`), which would make
    the input grid of every channel coarse and the requantization scale of the others too large for XNNPACK.

    >>> grid = QParams(8, np.array([1e-2, 1e-11]), np.zeros(2, np.int64), -127, 127, 0)
    >>> floor_weight_scales(grid, np.array([0.5, 0.5]), 0.02).scale.tolist() == [1e-2, 0.5 / (0.02 * 2 ** 30)]
    True
    """
    need = np.abs(np.asarray(bias, np.float64).reshape(-1)) / (input_scale * 2.0 ** (bits - 2))
    if not weight.per_channel or need.size != weight.scale.size or (need <= weight.scale).all():
        return weight
    return replace(weight, scale=np.maximum(weight.scale, need), _native={})


def clamp_cannot_bind(kind: str, zero_point: int, qmin: int, qmax: int, scale: float) -> bool:
    """Whether a ReLU (``kind`` 'relu') or ReLU6 ('relu6') of a tensor on one per-tensor grid changes nothing: the
    grid's lowest value is 0 (a ReLU's output) and, for ReLU6, its highest at most 6, so neither bound can bind.

    >>> clamp_cannot_bind("relu6", -128, -128, 127, 6.0 / 255), clamp_cannot_bind("relu6", -128, -128, 127, 0.03)
    (True, False)
    """
    return zero_point == qmin and (kind == "relu" or (kind == "relu6" and (qmax - qmin) * scale <= 6.0))


def bias_params(input_params: QParams, weight_params: QParams, bits: int = 32) -> QParams:
    """int32 bias parameters: ``scale = input_scale * weight_scale`` (per channel), zero point 0."""
    scale = input_params.scale[0] * weight_params.scale
    qmin, qmax = qrange(bits, True)
    return QParams(bits, scale, np.zeros(scale.shape, dtype=np.int64), qmin, qmax, 0 if weight_params.per_channel
                   else None)
