"""BatchNorm folding arithmetic shared by every framework (Jacob et al., 2018, section 3.2).

A BatchNorm after a conv / dense layer computes ``(y - mean) * f + beta`` per output channel with
``f = gamma / sqrt(var + eps)``. Folded into the layer, the weight is ``W * f`` (scaled along the
output-channel axis) and the bias ``(b - mean) * f + beta``. Quantization-aware training quantizes
the folded weight and hands the BatchNorm, still in the model, ``q(W f) / f``: on batch statistics
in training, and on its moving statistics in inference, where the pair computes exactly the folded
layer with the quantized folded weight.

The functions take native tensors (numpy, PyTorch, TensorFlow) and use only arithmetic operators;
``sqrt`` and the per-channel reshape come from the caller, as the framework supplies them.

Example:

>>> import numpy as np
>>> from slimkit.compression.bn_fold import bn_factor, fold_weight, folded_bias
>>> f = bn_factor(np.array([2.0, 1.0]), np.array([3.0, 0.0]), 1.0, np.sqrt)
>>> f.tolist()
[1.0, 1.0]
>>> fold_weight(np.ones((3, 2)), np.array([2.0, 0.5]), lambda v: v.reshape(1, -1)).tolist()[0]
[2.0, 0.5]
>>> folded_bias(None, np.array([1.0, 2.0]), np.array([0.5, 0.0]), np.array([2.0, 1.0])).tolist()
[-1.5, -2.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def bn_factor(gamma: Any, variance: Any, eps: float, sqrt: Callable[[Any], Any]) -> Any:
    """``gamma / sqrt(variance + eps)`` per channel (``gamma`` None: a BatchNorm without scale)."""
    root = sqrt(variance + eps)
    return 1.0 / root if gamma is None else gamma / root


def fold_weight(weight: Any, factor: Any, channel_view: Callable[[Any], Any]) -> Any:
    """``weight`` scaled by ``factor`` along its output-channel axis (``channel_view`` reshapes ``factor``
    to broadcast there)."""
    return weight * channel_view(factor)


def unfold_weight(weight: Any, factor: Any, channel_view: Callable[[Any], Any]) -> Any:
    """``weight / factor`` along the output-channel axis: the weight handed to the layer whose BatchNorm stays
    in the model (the layer's linearity makes ``conv(x, q(W f) / f)`` equal ``conv(x, q(W f)) / f``)."""
    return weight / channel_view(factor)


def folded_bias(bias: Any, mean: Any, beta: Any, factor: Any) -> Any:
    """``(bias - mean) * factor + beta``: the bias of the folded layer (``bias`` / ``beta`` None: zero)."""
    shifted = -mean if bias is None else bias - mean
    return shifted * factor if beta is None else shifted * factor + beta


def standalone_affine(gamma: np.ndarray | None, beta: np.ndarray | None, mean: np.ndarray, variance: np.ndarray,
                      eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` (float32, per channel) of a BatchNorm that folds into no layer (pre-activation), computed in
    float64: what the TFLite converter writes and the integer emulation reads, from the same numbers.

    Example:

    >>> scale, shift = standalone_affine(np.array([2.0]), None, np.array([1.0]), np.array([3.0]), 1.0)
    >>> scale.tolist(), shift.tolist()
    ([1.0], [-1.0])
    """
    mean = np.asarray(mean, np.float32)
    inv = 1.0 / np.sqrt(np.asarray(variance, np.float32).astype(np.float64) + float(eps))
    gamma = np.ones_like(mean) if gamma is None else np.asarray(gamma, np.float32)
    beta = np.zeros_like(mean) if beta is None else np.asarray(beta, np.float32)
    return (gamma * inv).astype(np.float32), (beta - mean * gamma * inv).astype(np.float32)


def affine_weight_grid(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q, weight_scale)``: a per-channel multiplier on the symmetric int8 weight grid of a 1x1 depthwise kernel
    (``weight_scale = |scale| / 127``, 1 for a zero channel; ``q`` = +-127 or 0), as the converter quantizes it.

    Example:

    >>> q, step = affine_weight_grid(np.array([0.5, -2.0, 0.0], np.float32))
    >>> q.tolist(), step.tolist()
    ([127.0, -127.0, 0.0], [0.003937007859349251, 0.015748031437397003, 1.0])
    """
    scale = np.asarray(scale, np.float32)
    step = np.abs(scale) / 127.0
    step = np.where(step == 0, 1.0, step).astype(np.float32)
    return np.clip(np.round(scale / step), -127, 127), step


__all__ = ["affine_weight_grid", "bn_factor", "fold_weight", "folded_bias", "standalone_affine", "unfold_weight"]
