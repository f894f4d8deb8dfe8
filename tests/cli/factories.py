"""Model, data and evaluation factories the CLI tests load by ``tests.cli.factories:name``."""

from __future__ import annotations

import functools

import torch

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
