"""What the calibrated algorithms on Linear layers share (GPTQ / AWQ quantization, Wanda and SparseGPT
pruning): ``calibrate(batches)``, the layer checks, and each layer's input statistics from the one
layer-by-layer loop of :mod:`slimkit.frameworks.torch.layer_inputs`. PyTorch models only.

Example:

>>> import torch
>>> from slimkit.algorithms.pruning import WandaPruner
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 2))
>>> pruner = WandaPruner(model, [{'sparsity': 0.5, 'op_types': ['Linear']}])
>>> pruner.compress()
Traceback (most recent call last):
...
slimkit.errors.CompressionStateError: WandaPruner needs calibration data: call calibrate(batches) before compress().
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slimkit.compression import Layer
from slimkit.errors import CompressionStateError, ConfigError, UnsupportedModelError


class LinearCalibration:
    """Mixin for a :class:`~slimkit.compression.Compressor` whose algorithm reads each Linear layer's inputs."""

    batches: list[Any] | None = None

    def calibrate(self, batches: Iterable[Any]) -> Any:
        """Keep ``batches`` (tensors, tuples of inputs or dicts of keyword inputs) for :meth:`compress`."""
        batches = list(batches)
        if not batches:
            raise ConfigError(f"{type(self).__name__}.calibrate: Expected at least one batch. Received: no batches")
        self.batches = batches
        return self

    def require_batches(self) -> None:
        if self.batches is None:
            raise CompressionStateError(f"{type(self).__name__} needs calibration data: call calibrate(batches) "
                                        f"before compress().")

    def check_linear(self, layer: Layer) -> None:
        """Refuse a layer that is not a PyTorch Linear (a subclass, or a registered Linear-like layer such as
        GPT-2's ``Conv1D``: see :mod:`slimkit.frameworks.torch.layout`)."""
        from torch import nn

        from slimkit.frameworks.torch.layout import linear_like

        if self.adapter.name != "torch":
            raise UnsupportedModelError(f"{type(self).__name__} compresses PyTorch models only. Received: a "
                                        f"{self.adapter.name} model")
        if not isinstance(layer.module, nn.Linear) and linear_like(layer.module) is None:
            raise ConfigError(f"{type(self).__name__}: config_list[{layer.config.index}] selects layer "
                              f"{layer.name!r} of type {layer.type}. Expected Linear layers; narrow 'op_types' to "
                              f"['Linear'] or exclude it.")

    @staticmethod
    def as_matrix(layer: Layer, value: Any) -> Any:
        """A weight-shaped tensor or array of ``layer`` as ``(out, in)`` (transposed where the layer stores its
        weight as ``(in, out)``); the inverse too, since it is a transpose."""
        return value if layer.out_axis == 0 else value.T

    def matrix(self, layer: Layer) -> Any:
        """``layer``'s weight (detached) as ``(out, in)``."""
        return self.as_matrix(layer, layer.module.weight.detach())

    def input_statistics(self, layer: Layer, hooked: Any, gram: bool = True) -> Any:
        """Statistics of ``layer``'s input over the calibration batches, the model run as it is now; the hook
        goes on ``hooked`` (the layer's wrapper while it is wrapped, else the layer); ``gram=False`` skips the
        ``X^T X`` product where only per-feature statistics are read."""
        from slimkit.frameworks.torch.layer_inputs import layer_statistics

        self.require_batches()
        return layer_statistics(self.model, hooked, self.batches, self.matrix(layer).shape[1], layer.name, gram)
