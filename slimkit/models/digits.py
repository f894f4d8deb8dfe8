"""A small CNN for the 8x8 digits bundled with slimkit, and the data as tensors (no network needed)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimkit.data import load_digits


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x2, max-pool, conv, global average pool, linear: 8x8 grayscale -> 10 classes."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width * 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width * 2)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(width * 2, width * 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(width * 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        x = self.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def load_digits_tensors(test_fraction: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 8x8 digits bundled with slimkit (:func:`slimkit.data.load_digits`, scikit-learn's ``load_digits()``)
    as ``(x_train, y_train, x_test, y_test)`` tensors; images ``(N, 1, 8, 8)`` in [0, 1]."""
    x_train, y_train, x_test, y_test = load_digits(test_fraction, seed)
    return (torch.from_numpy(x_train).unsqueeze(1), torch.from_numpy(y_train),
            torch.from_numpy(x_test).unsqueeze(1), torch.from_numpy(y_test))


def digits_accuracy(model: nn.Module) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on the test split of :func:`load_digits_tensors`: an
    ``evaluate(model) -> float`` for :func:`slimkit.analysis.sensitivity.sensitivity` and ``slimkit sensitivity``."""
    _, _, x_test, y_test = load_digits_tensors()
    model.eval()
    with torch.no_grad():
        return float((model(x_test).argmax(dim=1) == y_test).float().mean())
