"""``sparsity_pattern: 'N:M'``: in every group of M consecutive weights along a layer's input dimension, N are
pruned ('2:4', as NVIDIA's sparse tensor cores expect). Shared by LevelPruner, WandaPruner and SparseGPTPruner.

A weight is read as rows, one per output channel, with the input dimension (and a conv's kernel positions)
flattened in the framework's layout; groups run along those rows.

Example:

>>> import torch
>>> from slimkit.algorithms.pruning import LevelPruner
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 2, bias=False))
>>> with torch.no_grad():
...     _ = model[0].weight.copy_(torch.arange(16.0).reshape(2, 8) % 5)
>>> pruner = LevelPruner(model, [{'sparsity': 0.5, 'sparsity_pattern': '2:4', 'op_types': ['Linear']}])
>>> model = pruner.compress()
>>> pruner.get_masks()['0']['weight'].tolist()
[[0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]]
"""

from __future__ import annotations

import re

import numpy as np
from schema import And

from slimkit.compression import Layer
from slimkit.compression.config import ConfigKey
from slimkit.compression.sparsity import nm_mask
from slimkit.errors import ConfigError

_PATTERN = re.compile(r"^([1-9][0-9]*):([1-9][0-9]*)$")


def _valid(value: str) -> bool:
    match = _PATTERN.match(value)
    return bool(match) and int(match.group(1)) < int(match.group(2))


def _parse(value: str) -> tuple[int, int]:
    n, m = _PATTERN.match(value).groups()
    return int(n), int(m)


PATTERN_KEY = ConfigKey(And(str, _valid), "a string 'N:M' with 0 < N < M, such as '2:4'", None, _parse)
"""The ``sparsity_pattern`` config key (parsed to ``(n, m)``; None: unstructured)."""


def as_rows(array: np.ndarray, out_axis: int) -> np.ndarray:
    """``array`` with the output axis first and everything else flattened: (out, reduction)."""
    return np.moveaxis(array, out_axis, 0).reshape(array.shape[out_axis], -1)


def from_rows(rows: np.ndarray, shape: tuple[int, ...], out_axis: int) -> np.ndarray:
    """The inverse of :func:`as_rows` for an array of ``shape``."""
    moved = np.moveaxis(np.empty(shape, dtype=np.int8), out_axis, 0).shape
    return np.moveaxis(rows.reshape(moved), 0, out_axis)


def check_pattern(algorithm: str, layer: Layer) -> None:
    """Refuse a pattern that disagrees with ``sparsity`` or does not tile the layer's rows."""
    pattern = layer.config.get("sparsity_pattern")
    if pattern is None:
        return
    n, m = pattern
    where = f"{algorithm}: config_list[{layer.config.index}]"
    if abs(layer.config.sparsity - n / m) > 1e-9:
        raise ConfigError(f"{where} asks for sparsity {layer.config.sparsity} with sparsity_pattern '{n}:{m}', "
                          f"which prunes {n / m:g}. Expected sparsity={n / m:g}. Received: "
                          f"sparsity={layer.config.sparsity}")
    if not isinstance(layer.out_axis, int):
        raise ConfigError(f"{where}: layer {layer.name!r} ({layer.type}) has no single output axis for an N:M "
                          f"pattern. Expected a Linear or convolution layer; exclude it.")
    shape = tuple(layer.weight.shape)  # the entry's weight (a MultiheadAttention: in_proj_weight)
    reduction = int(np.prod(shape)) // shape[layer.out_axis]
    if reduction % m:
        raise ConfigError(f"{where}: layer {layer.name!r} has {reduction} weights per output channel, not a "
                          f"multiple of M={m}. Expected layers whose input size is a multiple of {m}; exclude it.")


def pattern_mask(layer: Layer, scores: np.ndarray) -> np.ndarray:
    """The N:M mask of ``layer`` from weight-shaped ``scores`` (the N smallest of each group pruned)."""
    n, m = layer.config.sparsity_pattern
    return from_rows(nm_mask(as_rows(scores, layer.out_axis), n, m), scores.shape, layer.out_axis)
