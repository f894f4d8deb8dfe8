"""Reference architectures (random-initialised) used by examples, tests and benchmarks.

Example:

>>> import torch
>>> from slimkit.models import resnet18, mobilenet_v2, DigitsCNN
>>> resnet18(num_classes=10).eval()(torch.randn(1, 3, 32, 32)).shape
torch.Size([1, 10])
>>> DigitsCNN()(torch.randn(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from slimkit.models.digits import DigitsCNN, digits_accuracy, load_digits_tensors
from slimkit.models.efficientnet_lite import efficientnet_lite0
from slimkit.models.mobilenet import mobilenet_v2
from slimkit.models.resnet import resnet18, resnet50
from slimkit.models.silero_vad import SileroVAD, load_silero_vad

__all__ = ["DigitsCNN", "SileroVAD", "digits_accuracy", "efficientnet_lite0", "load_digits_tensors", "load_silero_vad",
           "mobilenet_v2", "resnet18", "resnet50"]
