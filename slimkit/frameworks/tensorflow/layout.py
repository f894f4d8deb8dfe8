"""Where each Keras layer keeps its prunable weight, and which axis indexes output channels.

Keras stores kernels channels-last: ``Conv2D`` is ``(kh, kw, in, out)`` and ``Dense`` is
``(in, out)`` (output axis -1); ``Conv2DTranspose`` is ``(kh, kw, out, in)`` (axis -2).
``DepthwiseConv2D`` is ``(kh, kw, in, multiplier)`` and computes output channel
``c * multiplier + m`` from ``kernel[..., c, m]``: its output channels are the axes ``(-2, -1)``
read row-major (see :mod:`slimkit.compression.channels`), the order of PyTorch's
``Conv2d(in, in * multiplier, groups=in)`` and of TFLite's depthwise ``quantized_dimension``.
``SeparableConv2D`` (a depthwise then a 1x1 pointwise kernel) holds two kernels, compressed apart
(:data:`EXTRA_KERNELS`): the layer's own entry ``'sep1'`` is its ``pointwise_kernel``
``(1, 1, in * multiplier, out)`` and ``bias`` (filter pruning removes output channels), and the entry
``'sep1/depthwise'`` is its ``depthwise_kernel`` ``(kh, kw, in, multiplier)``, laid out and matched as a
``DepthwiseConv2D`` (``op_types: ['DepthwiseConv2D']`` selects it; output channel ``c * multiplier + m``).
``BatchNormalization`` prunes ``gamma`` (weight) and ``beta`` (bias), one entry per channel.

Example:

>>> import keras
>>> from slimkit.frameworks.tensorflow.layout import entries, out_axis, weight_attrs
>>> out_axis(keras.layers.Conv2DTranspose(4, 3)), out_axis(keras.layers.Dense(2))
(-2, -1)
>>> out_axis(keras.layers.DepthwiseConv2D(3)), out_axis(keras.layers.DepthwiseConv2D(3, depth_multiplier=2))
(-2, (-2, -1))
>>> weight_attrs(keras.layers.BatchNormalization()), weight_attrs(keras.layers.SeparableConv2D(4, 3))
(('gamma', 'beta'), ('pointwise_kernel', 'bias'))
>>> sep = keras.layers.SeparableConv2D(4, 3, depth_multiplier=2, name='sep1')
>>> entries('sep1', sep), out_axis(sep, 'depthwise_kernel')
([('sep1', None, 'SeparableConv2D'), ('sep1/depthwise', 'depthwise_kernel', 'DepthwiseConv2D')], (-2, -1))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from slimkit.compression.channels import ChannelAxis
from slimkit.frameworks.tensorflow.discovery import SEPARATOR

ROLES: dict[str, tuple[str, ...]] = {
    "weighted": ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                 "DepthwiseConv2D", "DepthwiseConv1D", "SeparableConv1D", "SeparableConv2D", "Dense"),
    "batchnorm": ("BatchNormalization",),
}

_TRANSPOSED = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


@dataclass(frozen=True)
class Kernel:
    """A weight of a layer compressed as an entry of its own, named ``'<layer><SEPARATOR><suffix>'``: the variable
    ``attr``, laid out (and matched by ``op_types``) as a layer of class ``type``; ``output``: it computes a tensor
    of its own inside the layer (quantizable as the entry's ``'output'``)."""

    suffix: str
    attr: str
    type: str
    output: bool = True


EXTRA_KERNELS: dict[type, tuple[Kernel, ...]] = {
    keras.layers.SeparableConv1D: (Kernel("depthwise", "depthwise_kernel", "DepthwiseConv1D"),),
    keras.layers.SeparableConv2D: (Kernel("depthwise", "depthwise_kernel", "DepthwiseConv2D"),),
}
"""Layers holding more weights than their own entry compresses (:func:`weight_attrs`), by class."""


def _depthwise_axis(layer: Any) -> ChannelAxis:
    return -2 if layer.depth_multiplier == 1 else (-2, -1)


_KERNEL_AXES = {"depthwise_kernel": _depthwise_axis}


def extra_kernels(layer: Any) -> tuple[Kernel, ...]:
    """The :class:`Kernel` entries ``layer`` has beside its own (none for most layers)."""
    return next((kernels for cls, kernels in EXTRA_KERNELS.items() if isinstance(layer, cls)), ())


def entries(name: str, layer: Any) -> list[tuple[str, str | None, str]]:
    """``(entry name, kernel attribute or None, type name)`` of every compressible entry of the layer ``name``: its
    own first (kernel None), then one per :func:`extra_kernels`."""
    return [(name, None, type(layer).__name__)] + [(f"{name}{SEPARATOR}{kernel.suffix}", kernel.attr, kernel.type)
                                                    for kernel in extra_kernels(layer)]


def kernel_output(layer: Any, kernel: str | None) -> bool:
    """Whether the extra ``kernel`` of ``layer`` computes a tensor of its own inside the layer (False for None)."""
    return any(entry.output for entry in extra_kernels(layer) if entry.attr == kernel)


def layer_name(entry: str, kernel: str | None) -> str:
    """The qualified name of the layer behind the entry ``entry`` (``'sep1'`` for ``'sep1/depthwise'``)."""
    return entry if kernel is None else entry.rpartition(SEPARATOR)[0]


def weight_attrs(layer: Any, kernel: str | None = None) -> tuple[str, str | None]:
    """Names of the (weight, bias) attributes of ``layer``: 'gamma'/'beta' for BatchNormalization,
    'pointwise_kernel'/'bias' for a separable conv, otherwise 'kernel'/'bias' (conv, transposed and
    depthwise conv, Dense); ``(kernel, None)`` for an extra kernel's entry (it has no bias of its own)."""
    if kernel is not None:
        return kernel, None
    if isinstance(layer, keras.layers.BatchNormalization):
        return "gamma", "beta"
    if isinstance(layer, _SEPARABLE):
        return "pointwise_kernel", "bias"
    return "kernel", "bias"


def variable(layer: Any, attr: str | None) -> keras.Variable | None:
    """The variable behind ``layer.<attr>`` (Dense keeps its kernel in ``_kernel``), or None."""
    if attr is None:
        return None
    for name in (f"_{attr}", attr):
        value = getattr(layer, name, None)
        if isinstance(value, keras.Variable):
            return value
    return None


def out_axis(layer: Any, kernel: str | None = None) -> ChannelAxis:
    """Axis of ``layer``'s weight (or of its extra ``kernel``) that indexes output channels; ``(-2, -1)`` for a
    depthwise kernel with ``depth_multiplier > 1`` (output channel ``c * multiplier + m``)."""
    if kernel is not None:
        return _KERNEL_AXES[kernel](layer)
    if isinstance(layer, _TRANSPOSED):
        return -2
    if isinstance(layer, _DEPTHWISE):
        return _depthwise_axis(layer)
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
