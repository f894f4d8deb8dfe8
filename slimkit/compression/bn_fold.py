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


__all__ = ["bn_factor", "fold_weight", "folded_bias", "unfold_weight"]
