"""A small CNN for scikit-learn's bundled 8x8 digits, and the data as tensors (no network needed)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


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
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``; images ``(N, 1, 8, 8)`` in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.tensor(np.random.default_rng(seed).permutation(len(labels)))
    split = int(len(labels) * (1 - test_fraction))
    train, test = order[:split], order[split:]
    return images[train], labels[train], images[test], labels[test]
