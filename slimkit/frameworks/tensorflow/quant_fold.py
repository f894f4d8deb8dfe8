"""BatchNorm folding on Keras: which layers fold which BatchNormalization, and the folded tensors.

A ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` (any ``depth_multiplier``) or ``Dense`` layer without its own
activation, called once, whose output feeds only a ``BatchNormalization`` over its channel axis (called
once, not itself quantized) folds that BatchNorm when its weight is quantized: the quantizer sees and
fake-quantizes the folded weight ``W * f`` (``f = gamma / sqrt(moving_variance + eps)``) and the layer
computes with ``q(W f) / f``, the BatchNorm left in the model (batch statistics and moving-statistics
updates in training, moving statistics in inference, where the pair is the folded layer with the
quantized folded weight). A folding layer's ``'output'`` is quantized where the fused conv+BN(+ReLU) kernel
ends: after the BatchNorm, or after a ``ReLU`` that is the BatchNorm's only consumer. The arithmetic is
:mod:`slimkit.compression.bn_fold`'s; this module supplies the Keras graph walk and the TensorFlow tensors.

Example:

>>> import numpy as np, keras
>>> from slimkit.frameworks.tensorflow.quant_fold import fold_bn
>>> model = keras.Sequential([keras.Input((5, 5, 2)), keras.layers.Conv2D(3, 3, name='conv'),
...                           keras.layers.BatchNormalization(name='bn')])
>>> kernel, bias = fold_bn(model.get_layer('conv'), model.get_layer('bn'))
>>> kernel.shape, bias.shape
((3, 3, 2, 3), (3,))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from slimkit.compression import bn_fold
from slimkit.compression.quant import QuantType
from slimkit.frameworks.tensorflow import layout, quant_ops

FOLDABLE = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv1D,
            keras.layers.DepthwiseConv2D, keras.layers.Dense)
_NOT_FOLDABLE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
                 keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def _single_consumer(layer: Any) -> Any:
    nodes = getattr(layer, "_outbound_nodes", [])
    return nodes[0].operation if len(nodes) == 1 and len(getattr(layer, "_inbound_nodes", [])) == 1 else None


def _channel_axis(layer: Any) -> int:
    rank = len(layer.output.shape)
    return layout.activation_axis(layer) % rank


def foldable_bn(layer: Any) -> Any:
    """The ``BatchNormalization`` layer that ``layer`` folds, or None (see the module docstring)."""
    if not isinstance(layer, FOLDABLE) or isinstance(layer, _NOT_FOLDABLE):
        return None
    if getattr(layer.activation, "__name__", "linear") != "linear":
        return None
    bn = _single_consumer(layer)
    if not isinstance(bn, keras.layers.BatchNormalization) or len(getattr(bn, "_inbound_nodes", [])) != 1:
        return None
    if not isinstance(bn.axis, int) or bn.axis % len(bn.input.shape) != _channel_axis(layer):
        return None
    return bn


@dataclass
class Fold:
    """A layer's folded BatchNorm, and where its (fused) output is quantized when it quantizes ``'output'``.

    Attributes:
        bn: the folded ``BatchNormalization``.
        tail: the layer whose output is the fused kernel's output (``bn``, or the ``ReLU`` after it when that is
            the BN's only consumer and not itself selected); None when the layer does not quantize its output.
        activation: ``'relu'`` / ``'relu6'`` when ``tail`` is that activation, else None.
    """

    bn: Any
    tail: Any = None
    activation: str | None = None


def _relu_kind(layer: Any) -> str | None:
    """``'relu'`` / ``'relu6'`` for a plain ReLU layer (``ReLU`` or ``Activation``), else None."""
    if isinstance(layer, keras.layers.ReLU) and not layer.negative_slope and not layer.threshold:
        return {None: "relu", 6.0: "relu6"}.get(None if layer.max_value is None else float(layer.max_value))
    if isinstance(layer, keras.layers.Activation):
        return {"relu": "relu", "relu6": "relu6"}.get(getattr(layer.activation, "__name__", None))
    return None


def plan_folds(layers: list[Any], quantizer: Any) -> dict[str, Fold]:
    """``{layer_name: Fold}`` for the selected layers that fold a BatchNorm (their weight quantized). A folding
    layer that quantizes ``'output'`` has it quantized at the fused kernel's end (:attr:`Fold.tail`), as the
    int8 model holds it."""
    selected = {id(layer.module) for layer in layers}
    folds = {}
    for layer in layers:
        if layer.kernel is not None or not quantizer.quantizes(layer, QuantType.QUANT_WEIGHT):
            continue  # an extra kernel (a separable conv's depthwise one) is not next to the BatchNorm
        bn = foldable_bn(layer.module)
        if bn is None or id(bn) in selected:
            continue
        fold = folds[layer.name] = Fold(bn)
        if quantizer.quantizes(layer, QuantType.QUANT_OUTPUT):
            fold.tail = bn
            after = _single_consumer(bn)
            activation = _relu_kind(after) if after is not None and id(after) not in selected else None
            if activation is not None and len(getattr(after, "_inbound_nodes", [])) == 1:
                fold.tail, fold.activation = after, activation
    return folds


def channel_view(layer: Any, weight: Any) -> Any:
    """A function reshaping a per-output-channel vector to broadcast along ``weight``'s output axis."""
    axis = layout.out_axis(layer)
    return lambda values: quant_ops.channel_view(values, weight, axis)


def factor(bn: Any) -> tf.Tensor:
    """``gamma / sqrt(moving_variance + epsilon)`` of ``bn`` (float32; differentiable in ``gamma``)."""
    gamma = bn.gamma if bn.scale else None
    return bn_fold.bn_factor(None if gamma is None else tf.convert_to_tensor(gamma), tf.convert_to_tensor(
        bn.moving_variance), bn.epsilon, tf.sqrt)


def fold_bn(layer: Any, bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of ``layer`` with ``bn``'s moving statistics folded in (numpy): ``layer`` with these
    weights computes ``bn(layer(x), training=False)``."""
    kernel = tf.convert_to_tensor(layer.kernel)
    f = factor(bn)
    bias = tf.convert_to_tensor(layer.bias) if getattr(layer, "use_bias", False) else None
    beta = tf.convert_to_tensor(bn.beta) if bn.center else None
    folded = bn_fold.fold_weight(kernel, f, channel_view(layer, kernel))
    return folded.numpy(), bn_fold.folded_bias(bias, tf.convert_to_tensor(bn.moving_mean), beta, f).numpy()
