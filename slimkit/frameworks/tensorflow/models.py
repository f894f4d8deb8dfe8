"""The Keras twin of :class:`slimkit.models.digits.DigitsCNN`, and the bundled digits as arrays.

Used by the Keras example, tests and benchmarks (no network needed: the data ships with slimkit).

Example:

>>> from slimkit.frameworks.tensorflow.models import digits_cnn
>>> model = digits_cnn(width=8)
>>> [layer.name for layer in model.layers if 'conv' in layer.name]
['conv1', 'conv2', 'conv3']
>>> model.output_shape
(None, 10)
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
