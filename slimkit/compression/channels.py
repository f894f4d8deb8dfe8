"""Output-channel axes of a weight: one axis, or several axes read as one (row-major).

Most layers index their output channels along one axis of the weight (``0`` for a PyTorch conv,
``-1`` for a Keras ``Conv2D``). A Keras ``DepthwiseConv2D`` with ``depth_multiplier=M`` keeps its
kernel as ``(kh, kw, in, M)`` and computes output channel ``c * M + m`` from ``kernel[..., c, m]``:
its channel axis is the pair ``(-2, -1)``, flattened in row-major order. Every function here takes
either form, so pruners and quantizers handle both without knowing the framework.

Example:

>>> import numpy as np
>>> from slimkit.compression.channels import channel_count, channel_rows, channel_shape
>>> kernel = np.arange(2 * 2 * 3 * 2).reshape(2, 2, 3, 2)   # (kh, kw, in=3, multiplier=2)
>>> channel_count(kernel.shape, (-2, -1)), channel_shape(kernel.shape, (-2, -1))
(6, [1, 1, 3, 2])
>>> channel_rows(kernel, (-2, -1))[1].tolist()   # output channel 1 = (in 0, multiplier 1)
[1, 7, 13, 19]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ChannelAxis = int | tuple[int, ...]
"""An axis, or axes whose row-major flattening indexes the output channels."""


def normalize_axis(axis: ChannelAxis | Sequence[int], ndim: int) -> ChannelAxis:
    """``axis`` with negative entries made non-negative (a list, as read from JSON, becomes a tuple)."""
    if isinstance(axis, (int, np.integer)):
        return int(axis) % ndim
    return tuple(int(a) % ndim for a in axis)


def channel_axes(axis: ChannelAxis, ndim: int) -> tuple[int, ...]:
    """The non-negative axes of ``axis`` as a tuple (one entry for a single axis)."""
    normalized = normalize_axis(axis, ndim)
    return (normalized,) if isinstance(normalized, int) else normalized


def channel_count(shape: Sequence[int], axis: ChannelAxis) -> int:
    """Number of output channels of a weight of ``shape``."""
    return math.prod(int(shape[a]) for a in channel_axes(axis, len(shape)))


def channel_shape(shape: Sequence[int], axis: ChannelAxis) -> list[int]:
    """Shape that a per-channel vector is reshaped to so it broadcasts against a weight of ``shape``."""
    axes = channel_axes(axis, len(shape))
    return [int(size) if i in axes else 1 for i, size in enumerate(shape)]


def channel_view(values: Any, ndim: int, axis: int) -> Any:
    """``values`` (a tensor or array, one per channel) reshaped to broadcast along ``axis`` of a tensor of ``ndim``
    axes: a per-channel scale against a weight (axis 0) or an NCHW activation (axis 1)."""
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return values.reshape(shape)


def channel_rows(weight: np.ndarray, axis: ChannelAxis) -> np.ndarray:
    """``weight`` as ``(channels, -1)``: row ``i`` holds every value of output channel ``i``."""
    axes = channel_axes(axis, weight.ndim)
    moved = np.moveaxis(weight, axes, tuple(range(len(axes))))
    return moved.reshape(channel_count(weight.shape, axis), -1)
