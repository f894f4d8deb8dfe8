"""Where each Keras layer keeps its prunable weight, and which axis indexes output channels.

Keras stores kernels channels-last: ``Conv2D`` is ``(kh, kw, in, out)`` and ``Dense`` is
``(in, out)`` (output axis -1); ``Conv2DTranspose`` is ``(kh, kw, out, in)`` (axis -2).
``DepthwiseConv2D`` is ``(kh, kw, in, multiplier)`` and computes output channel
``c * multiplier + m`` from ``kernel[..., c, m]``: its output channels are the axes ``(-2, -1)``
read row-major (see :mod:`slimkit.compression.channels`), the order of PyTorch's
``Conv2d(in, in * multiplier, groups=in)`` and of TFLite's depthwise ``quantized_dimension``.
``SeparableConv2D`` (a depthwise then a 1x1 pointwise kernel) is compressed through its
``pointwise_kernel`` ``(1, 1, in * multiplier, out)`` and ``bias``: filter pruning removes output
channels, level pruning and weight quantization act on the pointwise kernel; its depthwise kernel
is left as is (build ``DepthwiseConv2D`` + ``Conv2D(1)`` to compress both halves).
``BatchNormalization`` prunes ``gamma`` (weight) and ``beta`` (bias), one entry per channel.

Example:

>>> import keras
>>> from slimkit.frameworks.tensorflow.layout import out_axis, weight_attrs
>>> out_axis(keras.layers.Conv2DTranspose(4, 3)), out_axis(keras.layers.Dense(2))
(-2, -1)
>>> out_axis(keras.layers.DepthwiseConv2D(3)), out_axis(keras.layers.DepthwiseConv2D(3, depth_multiplier=2))
(-2, (-2, -1))
>>> weight_attrs(keras.layers.BatchNormalization()), weight_attrs(keras.layers.SeparableConv2D(4, 3))
(('gamma', 'beta'), ('pointwise_kernel', 'bias'))
"""

from __future__ import annotations

from typing import Any

import keras

from slimkit.compression.channels import ChannelAxis

ROLES: dict[str, tuple[str, ...]] = {
    "weighted": ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                 "DepthwiseConv2D", "DepthwiseConv1D", "SeparableConv1D", "SeparableConv2D", "Dense"),
    "batchnorm": ("BatchNormalization",),
}

_TRANSPOSED = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def weight_attrs(layer: Any) -> tuple[str, str]:
    """Names of the (weight, bias) attributes of ``layer``: 'gamma'/'beta' for BatchNormalization,
    'pointwise_kernel'/'bias' for a separable conv, otherwise 'kernel'/'bias' (conv, transposed and
    depthwise conv, Dense)."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return "gamma", "beta"
    if isinstance(layer, _SEPARABLE):
        return "pointwise_kernel", "bias"
    return "kernel", "bias"


def variable(layer: Any, attr: str) -> keras.Variable | None:
    """The variable behind ``layer.<attr>`` (Dense keeps its kernel in ``_kernel``), or None."""
    for name in (f"_{attr}", attr):
        value = getattr(layer, name, None)
        if isinstance(value, keras.Variable):
            return value
    return None


def out_axis(layer: Any) -> ChannelAxis:
    """Axis of ``layer``'s weight that indexes output channels; ``(-2, -1)`` for a depthwise conv
    with ``depth_multiplier > 1`` (output channel ``c * multiplier + m``)."""
    if isinstance(layer, _TRANSPOSED):
        return -2
    if isinstance(layer, _DEPTHWISE):
        return -2 if layer.depth_multiplier == 1 else (-2, -1)
    return -1


def activation_axis(layer: Any) -> int:
    """Channel axis of ``layer``'s output: -1 for channels_last, 1 for channels_first."""
    data_format = getattr(layer, "data_format", None)
    if data_format == "channels_first":
        return 1
    axis = getattr(layer, "axis", None)  # BatchNormalization
    if isinstance(layer, keras.layers.BatchNormalization) and isinstance(axis, int):
        return axis
    return -1
