"""The bundled digits are scikit-learn's ``load_digits()``, and load without scikit-learn."""

from __future__ import annotations

import sys

import numpy as np
import torch

from slimkit.data import load_digits


def test_bundled_digits_equal_scikit_learns():
    from sklearn.datasets import load_digits as sklearn_digits

    reference = sklearn_digits()
    x_train, y_train, x_test, y_test = load_digits(test_fraction=0.0)
    order = np.random.default_rng(0).permutation(len(reference.target))
    np.testing.assert_array_equal(x_train, (reference.images / 16.0).astype(np.float32)[order])
    np.testing.assert_array_equal(y_train, reference.target[order])
    assert x_test.shape == (0, 8, 8) and y_test.shape == (0,)


def test_loaders_need_no_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    from slimkit.models import load_digits_tensors

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=3)
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    reference = load_digits(seed=3)
    assert torch.equal(x_test[:, 0], torch.from_numpy(reference[2]))
    assert torch.equal(y_test, torch.from_numpy(reference[3]))
    assert sorted(torch.cat([y_train, y_test]).bincount().tolist()) == [174, 177, 178, 179, 180, 181, 181, 182,
                                                                        182, 183]
