"""TensorFlow implementation of the quantization ops seam (the ``QuantOps`` protocol of
``slimkit.compression.quant``), for fake quantization inside Keras layers.

``params`` is duck-typed: anything with ``bits``, ``scale`` and ``zero_point`` (1-D numpy arrays),
``qmin``, ``qmax`` and ``axis`` (None for per-tensor) works, as ``QParams`` does. Gradients are
straight-through (``tf.custom_gradient``); ``fake_quant`` zeroes the gradient of values that
quantize outside ``[qmin, qmax]``, as TFLite's and PyTorch's fake-quant kernels do.

Example:

>>> import numpy as np, tensorflow as tf
>>> from types import SimpleNamespace
>>> from slimkit.frameworks.tensorflow.quant_ops import OPS
>>> p = SimpleNamespace(bits=8, scale=np.array([1 / 127]), zero_point=np.array([0]), qmin=-127, qmax=127, axis=None)
>>> np.round(OPS.fake_quant(tf.constant([0.5, 2.0]), p).numpy() * 127).tolist()
[64.0, 127.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from keras.src.backend.common import global_state

from slimkit.compression.channels import ChannelAxis, channel_rows, channel_shape
from slimkit.compression.quant import qrange
from slimkit.errors import CompressionStateError


def channel_view(values: tf.Tensor, like: Any, axis: ChannelAxis) -> tf.Tensor:
    """``values`` (one per output channel) reshaped to broadcast along ``axis`` of the tensor ``like``."""
    return tf.reshape(values, channel_shape(tuple(like.shape), axis))


def fake_quant_tensors(x: tf.Tensor, scale: tf.Tensor, zero_point: tf.Tensor, qmin: int, qmax: int) -> tf.Tensor:
    """``(clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale`` in float32 with round half to
    even (``scale`` / ``zero_point`` float32 tensors broadcasting against ``x``, graph values or constants); the
    gradient w.r.t. ``x`` passes where ``x`` quantizes inside ``[qmin, qmax]`` and is zero outside, none reaches
    the parameters. The one fake-quant formula of the eager and the graph-native paths."""
    scale, zero_point = tf.stop_gradient(scale), tf.stop_gradient(zero_point)

    @tf.custom_gradient
    def quantize(value: tf.Tensor) -> tuple[tf.Tensor, Callable]:
        q = tf.round(tf.cast(value, tf.float32) / scale) + zero_point
        inside = tf.logical_and(q >= qmin, q <= qmax)
        out = (tf.clip_by_value(q, float(qmin), float(qmax)) - zero_point) * scale

        def grad(upstream: tf.Tensor) -> tf.Tensor:
            return tf.where(inside, upstream, tf.zeros_like(upstream))

        return tf.cast(out, value.dtype), grad

    return quantize(x)


def range_params(lo: tf.Tensor, hi: tf.Tensor, bits: int, scheme: Any, levels: tf.Tensor) -> tuple[tf.Tensor,
                                                                                                     tf.Tensor]:
    """In-graph twin of :func:`slimkit.compression.quant.affine_params` for ``pow2=False`` schemes: float64
    scale and zero point covering ``[lo, hi]`` (float64 tensors, per channel or length 1), the same numbers
    the numpy function gives (same float64 operations, round half to even).

    ``levels`` is ``max(qmax - qmin, 1)`` as a float64 tensor read at run time (e.g. from a variable): a constant
    divisor would be rewritten by Grappler and XLA into a multiplication by its reciprocal, which is not exact.
    """
    qmin, qmax = qrange(bits, scheme.signed, scheme.narrow)
    lo, hi = tf.minimum(lo, 0.0), tf.maximum(hi, 0.0)
    if scheme.symmetric:
        scale = 2.0 * tf.maximum(-lo, hi) / levels
        scale = tf.where(scale > 0, scale, tf.ones_like(scale))
        zero_point = tf.fill(tf.shape(scale), tf.constant(0.0 if scheme.signed else float((qmin + qmax + 1) // 2),
                                                          tf.float64))
        return scale, zero_point
    scale = (hi - lo) / levels
    scale = tf.where(scale > 0, scale, tf.ones_like(scale))
    return scale, tf.clip_by_value(tf.round(qmin - lo / scale), float(qmin), float(qmax))


def call_training(kwargs: dict) -> bool:
    """The ``training`` flag of the current Keras call (explicit argument, else the call context)."""
    value = kwargs.get("training")
    if value is None:
        context = global_state.get_global_attribute("current_call_ctx")
        value = context.get_value("training") if context is not None else None
    return value if isinstance(value, bool) else False


def fake_quant_range(params: Any) -> tuple[float, float]:
    """``[min, max]`` of TF's ``fake_quant_with_min_max_vars`` reproducing ``params`` (per tensor)."""
    scale, zero_point = float(params.scale[0]), float(params.zero_point[0])
    return (params.qmin - zero_point) * scale, (params.qmax - zero_point) * scale


def fake_quant_deploy(x: tf.Tensor, params: Any, where: str, key: str) -> tf.Tensor:
    """``x`` through TF's ``fake_quant_with_min_max_vars`` on the frozen per-tensor ``params`` (what TensorFlow's
    TFLite converter reads as the int8 tensor's parameters).

    Raises:
        CompressionStateError: ``params`` is None (``where``'s ``key`` tensor has not seen data).
    """
    if params is None:
        raise CompressionStateError(
            f"{where} has no {key} range yet. Expected a calibrated or trained quantizer: run calibrate() or some "
            "training steps before exporting.")
    lo, hi = fake_quant_range(params)
    narrow = params.qmax - params.qmin == 2 ** params.bits - 2
    return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=params.bits, narrow_range=narrow)


class TFQuantOps:
    """The quantization ops seam for TensorFlow tensors (Keras 3, TensorFlow backend)."""

    def _params(self, x: tf.Tensor, params: Any) -> tuple[tf.Tensor, tf.Tensor]:
        scale = tf.constant(np.asarray(params.scale, dtype=np.float32))
        zero_point = tf.constant(np.asarray(params.zero_point, dtype=np.float32))
        if params.axis is not None:
            return channel_view(scale, x, params.axis), channel_view(zero_point, x, params.axis)
        return scale[0], zero_point[0]

    def _quantize(self, x: tf.Tensor, params: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        scale, zero_point = self._params(x, params)
        q = tf.round(tf.cast(x, tf.float32) / scale) + zero_point
        return q, scale, zero_point

    def fake_quant(self, x: tf.Tensor, params: Any) -> tf.Tensor:
        """Quantize-dequantize ``x``; gradient passes inside ``[qmin, qmax]`` and is zero outside."""
        scale, zero_point = self._params(x, params)
        return fake_quant_tensors(x, scale, zero_point, params.qmin, params.qmax)

    def straight_through(self, x: tf.Tensor, forward: Callable, backward: Callable) -> tf.Tensor:
        """``forward(x)`` in the forward pass; ``backward(x, grad_output)`` as the gradient."""

        @tf.custom_gradient
        def wrapped(value: tf.Tensor) -> tuple[tf.Tensor, Callable]:
            return tf.identity(forward(tf.stop_gradient(value))), lambda upstream: backward(value, upstream)

        return wrapped(x)

    def round_ste(self, x: tf.Tensor) -> tf.Tensor:
        return x + tf.stop_gradient(tf.round(x) - x)

    def sign_ste(self, x: tf.Tensor) -> tf.Tensor:
        return x + tf.stop_gradient(tf.where(x >= 0, tf.ones_like(x), -tf.ones_like(x)) - x)

    def clamp(self, x: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
        return tf.clip_by_value(x, lo, hi)

    def tanh(self, x: tf.Tensor) -> tf.Tensor:
        return tf.tanh(x)

    def abs_max(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_max(tf.abs(tf.stop_gradient(x)))

    def min_max(self, x: tf.Tensor, axis: ChannelAxis | None = None) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(x, dtype=np.float64)
        if axis is None:
            return np.array([values.min()]), np.array([values.max()])
        flat = channel_rows(values, axis)
        return flat.min(axis=1), flat.max(axis=1)

    def histogram(self, x: tf.Tensor, bins: int, hi: float, skip_zeros: bool = False) -> np.ndarray:
        magnitude = np.abs(np.asarray(x, dtype=np.float32)).reshape(-1)
        counts = np.histogram(np.clip(magnitude, 0.0, hi), bins=bins, range=(0.0, hi))[0].astype(np.float64)
        if skip_zeros:
            counts[0] -= float((magnitude == 0).sum())
        return counts

    def clip_grad(self, x: tf.Tensor, grad: tf.Tensor, params: Any) -> tf.Tensor:
        q, _, _ = self._quantize(x, params)
        return tf.where(tf.logical_or(q < params.qmin, q > params.qmax), tf.zeros_like(grad), grad)

    def broadcastable(self, params: Any, like: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Scale and zero point as float32 tensors broadcasting against ``like`` (per-channel along ``params.axis``)."""
        return self._params(like, params)

    def zero_grad_where_abs_above(self, x: tf.Tensor, grad: tf.Tensor, limit: float) -> tf.Tensor:
        return tf.where(tf.abs(x) > limit, tf.zeros_like(grad), grad)


OPS = TFQuantOps()
