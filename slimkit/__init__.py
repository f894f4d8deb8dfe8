"""slimkit: model compression for PyTorch and Keras.

Pruners and quantizers driven by a ``config_list``, real speedup of pruned PyTorch models,
and export to ONNX and TFLite.

Example:

>>> import torch, slimkit
>>> from slimkit.algorithms.pruning import LevelPruner
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
>>> model = LevelPruner(model, [{'sparsity': 0.5, 'op_types': ['Linear']}]).compress()
>>> isinstance(slimkit.ConfigError('x'), ValueError)
True
"""

from slimkit.errors import (
    CompositionError,
    CompressionStateError,
    ConfigError,
    FileFormatError,
    MaskError,
    MissingDependencyError,
    NonFiniteError,
    SlimkitError,
    UnsupportedModelError,
    UnsupportedOpError,
)
from slimkit.masks import load_masks

__version__ = "0.1.0"

__all__ = [
    "CompositionError",
    "CompressionStateError",
    "ConfigError",
    "FileFormatError",
    "MaskError",
    "MissingDependencyError",
    "NonFiniteError",
    "SlimkitError",
    "UnsupportedModelError",
    "UnsupportedOpError",
    "load_masks",
]
