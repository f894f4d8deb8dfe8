"""Small data sets bundled with slimkit, so examples and tests need neither a network nor scikit-learn.

``digits.npz`` holds the 1,797 8x8 hand-written digits that scikit-learn ships as ``load_digits()``
(pixel values 0-16 as ``uint8``, labels 0-9): the test set of the UCI "Optical Recognition of
Handwritten Digits" data set by E. Alpaydin and C. Kaynak (https://archive.ics.uci.edu/dataset/80,
CC BY 4.0).

Example:

>>> from slimkit.data import load_digits
>>> x_train, y_train, x_test, y_test = load_digits()
>>> x_train.shape, x_test.shape, x_train.dtype.name, float(x_train.max()), y_train.dtype.name
((1347, 8, 8), (450, 8, 8), 'float32', 1.0, 'int64')
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load_digits"]


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as ``(x_train, y_train, x_test, y_test)``: images ``(N, 8, 8)`` float32 in [0, 1], labels int64,
    split by a permutation drawn from ``numpy.random.default_rng(seed)``."""
    with np.load(Path(__file__).with_name("digits.npz"), allow_pickle=False) as data:
        images = data["images"].astype(np.float32) / np.float32(16.0)
        labels = data["labels"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    split = int(len(labels) * (1 - test_fraction))
    train, test = order[:split], order[split:]
    return images[train], labels[train], images[test], labels[test]
