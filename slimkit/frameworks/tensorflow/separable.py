"""A Keras separable conv computed as its two halves, with a function applied to the tensor between them.

``SeparableConv1D/2D`` compute ``ops.separable_conv``: a depthwise conv, then a 1x1 pointwise conv, in one op. The
tensor between the halves never appears in Keras, but TFLite holds it (``DEPTHWISE_CONV_2D`` then ``CONV_2D``), and
in an int8 file it has its own scale. :func:`separable_call` computes the layer as its halves so that a quantizer can
fake-quantize that tensor (the depthwise entry's ``'output'``), and so that TensorFlow's converter, which turns the
fake quantization into the int8 tensor's parameters, sees it.

Example:

>>> import numpy as np, keras
>>> from slimkit.frameworks.tensorflow.separable import separable_call
>>> layer = keras.layers.SeparableConv2D(3, 3, depth_multiplier=2, activation='relu')
>>> x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype('float32')
>>> whole = np.asarray(layer(x))
>>> halves = np.asarray(separable_call(layer, x, lambda middle: middle))
>>> bool(np.allclose(whole, halves, atol=1e-5))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops


def separable_call(layer: Any, inputs: Any, middle: Callable[[Any], Any]) -> Any:
    """``layer(inputs)`` for a ``SeparableConv1D/2D`` ``layer``, with ``middle`` applied to the depthwise output."""
    depthwise = ops.depthwise_conv(inputs, layer.depthwise_kernel, strides=layer.strides, padding=layer.padding,
                                   dilation_rate=layer.dilation_rate, data_format=layer.data_format)
    outputs = ops.conv(middle(depthwise), layer.pointwise_kernel, strides=1, padding="valid",
                       data_format=layer.data_format)
    if layer.use_bias:
        shape = ((1,) * (layer.rank + 1) + (layer.filters,) if layer.data_format == "channels_last"
                 else (1, layer.filters) + (1,) * layer.rank)
        outputs = ops.add(outputs, ops.reshape(layer.bias, shape))
    return outputs if layer.activation is None else layer.activation(outputs)
