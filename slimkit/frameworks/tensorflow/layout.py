"""Where each Keras layer keeps its prunable weight, and which axis indexes output channels.

Keras stores kernels channels-last: ``Conv2D`` is ``(kh, kw, in, out)`` and ``Dense`` is
``(in, out)`` (output axis -1); ``Conv2DTranspose`` is ``(kh, kw, out, in)`` (axis -2);
``DepthwiseConv2D`` is ``(kh, kw, in, multiplier)``: its output channel ``c * multiplier + m``
spans two axes, so with ``depth_multiplier == 1`` the output axis is -2 (the channel axis) and a
larger multiplier has no single output axis. ``BatchNormalization`` prunes ``gamma`` (weight) and
``beta`` (bias), one entry per channel (axis -1 of a 1-D vector).

Example:

>>> import keras
>>> from slimkit.frameworks.tensorflow.layout import out_axis, weight_attrs
>>> out_axis(keras.layers.Conv2DTranspose(4, 3)), out_axis(keras.layers.Dense(2))
(-2, -1)
>>> weight_attrs(keras.layers.BatchNormalization())
('gamma', 'beta')
"""

from __future__ import annotations

from typing import Any

import keras

from slimkit.errors import UnsupportedOpError

ROLES: dict[str, tuple[str, ...]] = {
    "weighted": ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                 "DepthwiseConv2D", "DepthwiseConv1D", "Dense"),
    "batchnorm": ("BatchNormalization",),
}

_TRANSPOSED = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def weight_attrs(layer: Any) -> tuple[str, str]:
    """Names of the (weight, bias) attributes of ``layer``: 'gamma'/'beta' for BatchNormalization,
    otherwise 'kernel'/'bias' (conv, transposed and depthwise conv, Dense)."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return "gamma", "beta"
    return "kernel", "bias"


def variable(layer: Any, attr: str) -> keras.Variable | None:
    """The variable behind ``layer.<attr>`` (Dense keeps its kernel in ``_kernel``), or None."""
    for name in (f"_{attr}", attr):
        value = getattr(layer, name, None)
        if isinstance(value, keras.Variable):
            return value
    return None


def out_axis(layer: Any) -> int:
    """Axis of ``layer``'s weight that indexes output channels.

    Raises:
        UnsupportedOpError: a depthwise conv with ``depth_multiplier > 1`` (no single axis).
    """
    if isinstance(layer, _TRANSPOSED):
        return -2
    if isinstance(layer, _DEPTHWISE):
        if layer.depth_multiplier != 1:
            raise UnsupportedOpError(
                f"Layer {layer.name!r}: the output channels of a {type(layer).__name__} with depth_multiplier > 1 "
                f"span the kernel's last two axes, so channel pruning is not defined. Expected depth_multiplier=1. "
                f"Received: depth_multiplier={layer.depth_multiplier}")
        return -2
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
