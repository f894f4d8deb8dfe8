"""Speedup: make pruning masks physical in a PyTorch model (fewer channels, same outputs).

Channel dependencies (residual adds, concat, split, group and depthwise convs, BatchNorm,
shared modules, flatten into Linear, channel shuffle) are found on the graph that
:func:`slimkit.frameworks.torch.graph.capture_graph` captures, then layers are rebuilt.

Example:

>>> import torch
>>> from slimkit.speedup import ModelSpeedup
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
>>> masks = {'0': {'weight': torch.tensor([[1.0] * 4, [0.0] * 4, [1.0] * 4]), 'bias': torch.tensor([1.0, 0, 1])}}
>>> speedup = ModelSpeedup(model, torch.randn(2, 4), masks)
>>> model = speedup.speedup_model()
>>> speedup.report.params_after
16
"""

from slimkit.speedup.model_speedup import ModelSpeedup
from slimkit.speedup.report import LayerChange, SpeedupReport

__all__ = ["LayerChange", "ModelSpeedup", "SpeedupReport"]
