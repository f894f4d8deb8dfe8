"""Model, data and evaluation factories the CLI tests load by ``tests.cli.factories:name``."""

from __future__ import annotations

import functools

import numpy as np
import torch

from slimkit.algorithms.pruning import FilterPruner, LevelPruner
from slimkit.models import DigitsCNN, load_digits_tensors


def digits_model() -> DigitsCNN:
    """A DigitsCNN with fixed (seed 0) random weights."""
    torch.manual_seed(0)
    return DigitsCNN()


@functools.cache
def _digits():
    return load_digits_tensors()


def digits_data():
    """``(x_train, y_train, x_test, y_test)`` of scikit-learn's digits."""
    return _digits()


def digits_accuracy(model) -> float:
    """Top-1 accuracy on the first 200 test digits."""
    _, _, x_test, y_test = _digits()
    model.eval()
    with torch.no_grad():
        return float((model(x_test[:200]).argmax(dim=1) == y_test[:200]).float().mean())


NOT_CALLABLE = 3


class LastChannelsPruner(FilterPruner):
    """A user's own pruner, loaded by the CLI from ``algorithm: tests.cli.factories:LastChannelsPruner``:
    channel ``i`` scores ``-i``, so the highest-numbered channels go first."""

    def channel_importance(self, layer):
        return -np.arange(self.weight_of(layer).shape[layer.out_axis], dtype=np.float64)


class TrainFirstLevelPruner(LevelPruner):
    """A user's pruner that requires a ``trainer`` and a ``criterion`` (NNI style): ``compress()`` trains one epoch
    with them, then computes the level masks."""

    def __init__(self, model, config_list, optimizer=None, *, trainer, criterion):
        super().__init__(model, config_list, optimizer)
        self.trainer, self.criterion = trainer, criterion

    def compress(self):
        self.trainer(self.model, self.optimizer, self.criterion, 0)
        return super().compress()


def keras_cnn():
    """A small Keras CNN (seed 0) for the CLI's Keras paths."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation='relu', name='conv'),
                             keras.layers.GlobalAveragePooling2D(name='gap'), keras.layers.Dense(10, name='fc')])


def keras_digits_data():
    """``(x_train, y_train, x_test, y_test)`` of the bundled digits as arrays, images ``(N, 8, 8, 1)``."""
    from slimkit.frameworks.tensorflow.models import load_digits_arrays

    return load_digits_arrays()
