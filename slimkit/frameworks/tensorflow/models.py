"""The Keras twin of :class:`slimkit.models.digits.DigitsCNN`, a small MobileNetV2-style network, and the
bundled digits as arrays.

Used by the Keras example, tests and benchmarks (no network needed: the data ships with slimkit).

Example:

>>> from slimkit.frameworks.tensorflow.models import digits_cnn, mobilenet_style
>>> model = digits_cnn(width=8)
>>> [layer.name for layer in model.layers if 'conv' in layer.name]
['conv1', 'conv2', 'conv3']
>>> model.output_shape
(None, 10)
>>> mobilenet_style().count_params()
5234
"""

from __future__ import annotations

import keras
import numpy as np

from slimkit.data import load_digits


def digits_cnn(width: int = 32, num_classes: int = 10) -> keras.Model:
    """Conv-BN-ReLU x2, max-pool, conv-ReLU, global average pool, Dense: (8, 8, 1) -> logits.

    BatchNormalization uses momentum 0.9 (PyTorch's default), so a few epochs settle its statistics.
    """
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.ReLU(name="relu1")(keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x))
    x = keras.layers.Conv2D(width * 2, 3, padding="same", use_bias=False, name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(keras.layers.BatchNormalization(momentum=0.9, name="bn2")(x))
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(width * 2, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="fc")(x), name="digits_cnn")


def mobilenet_style(input_shape: tuple[int, ...] = (16, 16, 3), width: int = 16, num_classes: int = 10) -> keras.Model:
    """MobileNetV2-style: a strided stem, an inverted residual block (1x1 expand to ``2 * width``, 3x3 depthwise,
    1x1 project, ``Add``), a strided block without residual (expand to ``3 * width``, project to
    ``1.5 * width``), BatchNormalization (momentum 0.9, as in :func:`digits_cnn`) after every conv, ReLU6 (as a
    layer and as an activation), global average pooling, dropout and a Dense head."""
    inputs = keras.Input(input_shape, name="image")
    layers = keras.layers

    def bn(name: str) -> keras.layers.BatchNormalization:
        return layers.BatchNormalization(momentum=0.9, name=name)

    def bn_relu6(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
        return layers.ReLU(6.0, name=f"{name}_relu")(bn(f"{name}_bn")(x))

    y = bn_relu6(layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs), "stem")
    e = bn_relu6(layers.Conv2D(2 * width, 1, use_bias=False, name="b1_expand")(y), "b1_expand")
    d = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="b1_dw")(e)
    d = layers.Activation("relu6", name="b1_dw_relu")(bn("b1_dw_bn")(d))
    p = bn("b1_project_bn")(layers.Conv2D(width, 1, use_bias=False, name="b1_project")(d))
    y = layers.Add(name="b1_add")([y, p])
    e = bn_relu6(layers.Conv2D(3 * width, 1, use_bias=False, name="b2_expand")(y), "b2_expand")
    d = bn_relu6(layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="b2_dw")(e), "b2_dw")
    y = bn("b2_project_bn")(layers.Conv2D(3 * width // 2, 1, name="b2_project")(d))
    y = layers.Dropout(0.2, name="dropout")(layers.GlobalAveragePooling2D(name="gap")(y))
    return keras.Model(inputs, layers.Dense(num_classes, name="fc")(y), name="mobilenet_style")


def load_digits_arrays(test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The 8x8 digits bundled with slimkit (:func:`slimkit.data.load_digits`) as ``(x_train, y_train, x_test,
    y_test)``; images ``(N, 8, 8, 1)`` in [0, 1]."""
    x_train, y_train, x_test, y_test = load_digits(test_fraction, seed)
    return x_train[..., None], y_train, x_test[..., None], y_test


def compile_classifier(model: keras.Model, learning_rate: float = 3e-3) -> keras.Model:
    """Compile ``model`` for integer labels and logits (Adam, sparse cross-entropy, accuracy)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model
