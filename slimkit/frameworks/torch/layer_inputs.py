"""The one layer-by-layer calibration loop of the calibrated weight algorithms (GPTQ, AWQ, Wanda, SparseGPT).

Layers are processed one at a time, in the order given: the calibration batches run through the
model as it is *now* (earlier layers already compressed, as GPTQ and SparseGPT expect), a hook on the
one layer feeds its inputs to a :class:`InputStatistics` accumulator, and the forward stops at that
layer, so peak memory is one layer's statistics plus the activations up to it.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.layer_inputs import InputStatistics, layer_statistics
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
>>> stats = layer_statistics(model, model[0], [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]])], 2)
>>> stats.rows, stats.hessian().tolist()
(2, [[5.0, 1.0], [1.0, 2.0]])
>>> stats.column_norms().tolist()
[3.1622776985168457, 2.0]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError, SlimkitError


class _StopForward(Exception):
    """Raised by the hook once the layer's input is recorded: nothing after the layer is computed."""


class InputStatistics:
    """Running statistics of a Linear layer's input rows (the last dimension is the feature axis).

    Accumulates ``X^T X`` (float64; ``gram=False`` skips it where only per-feature statistics are needed), the sum of
    squares and of absolute values per feature, and the row count.
    """

    def __init__(self, features: int, device: torch.device | None = None, gram: bool = True):
        self.features = features
        self.gram = torch.zeros(features, features, dtype=torch.float64, device=device) if gram else None
        self.square_sum = torch.zeros(features, dtype=torch.float64, device=device)
        self.abs_sum = torch.zeros(features, dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        if self.gram is not None:
            self.gram += rows.T @ rows
        self.square_sum += (rows * rows).sum(dim=0)
        self.abs_sum += rows.abs().sum(dim=0)
        self.rows += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        """``X^T X / rows`` (float64): the layer-output error's Hessian up to a factor 2 (needs ``gram=True``)."""
        return self.gram / max(self.rows, 1)

    def column_norms(self) -> torch.Tensor:
        """Per-feature L2 norm of the input over every row seen (Wanda's ``||X_j||``)."""
        return self.square_sum.sqrt().to(torch.float32)

    def mean_abs(self) -> torch.Tensor:
        """Per-feature mean absolute input (AWQ's activation salience)."""
        return (self.abs_sum / max(self.rows, 1)).to(torch.float32)


def _call(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def layer_statistics(model: nn.Module, layer: nn.Module, batches: Iterable[Any], features: int,
                     name: str = "", gram: bool = True) -> InputStatistics:
    """Run ``batches`` through ``model`` up to ``layer`` and return the statistics of its ``features``-wide input.

    ``batches``: tensors, tuples of positional inputs or dicts of keyword inputs. Raises
    :class:`~slimkit.errors.ConfigError` naming ``name`` when no batch reaches the layer, or a batch
    does not run.
    """
    stats = InputStatistics(features, next(iter(layer.parameters()), torch.empty(0)).device, gram)

    def hook(module: nn.Module, args: tuple) -> None:
        if args[0].shape[-1] != features:
            raise ConfigError(f"Layer {name!r} received inputs of {args[0].shape[-1]} features. Expected "
                              f"{features} features in the last dimension. Received: shape={tuple(args[0].shape)}")
        stats.add(args[0])
        raise _StopForward

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                try:
                    _call(model, batch)
                except _StopForward:
                    continue
                except SlimkitError:
                    raise
                except (RuntimeError, TypeError, ValueError) as error:
                    raise ConfigError(f"Calibration batch {index} does not run through the model ({error}). "
                                      f"Expected batches the model accepts (a tensor, a tuple of inputs or a "
                                      f"dict of keyword inputs).") from error
    finally:
        handle.remove()
    if stats.rows == 0:
        raise ConfigError(f"No calibration batch reached layer {name!r}. Expected batches whose forward runs "
                          f"through it; check that the layer is used in forward.")
    return stats
