"""Mixed-precision search: per-layer weight bits under a size budget, from per-layer sensitivity.

:func:`mixed_precision` quantizes the weights of one layer at a time (per-channel symmetric, as the
``tflite`` profile does) at each candidate width and records how far the model's output moves (mean squared
error against the float output on the batches). :func:`solve_bits` then picks one width per layer minimising
the summed sensitivity with the weights' total size within the budget, exactly: a dynamic program over the
layers (a knapsack over sizes divided by their greatest common divisor). The result is a ``config_list`` the
user can edit and hand to a quantizer; ``32`` among the candidates means a float island (``exclude``).
With ``group_size`` the candidates are weight-only groups (as :class:`WeightOnlyQuantizer`'s symmetric RTN grid,
e.g. int4 in groups of 128 beside int8 per channel) and the plan is a ``WeightOnlyQuantizer`` config_list.

Example:

>>> from slimkit.analysis.mixed_precision import solve_bits
>>> table = {'a': {4: (50, 9.0), 8: (100, 1.0)}, 'b': {4: (50, 2.0), 8: (100, 0.5)}}
>>> solve_bits(table, budget_bytes=150)  # 'a' is the sensitive one: it keeps 8 bits
{'a': 8, 'b': 4}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimkit.errors import ConfigError

FLOAT_BITS = 32
"""A candidate width meaning: leave the layer in float (``{'exclude': True}`` in the config_list)."""


@dataclass
class MixedPrecisionPlan:
    """The chosen width of each layer and what it costs.

    Attributes:
        bits: ``{layer: bits}`` in model order (``32``: float).
        config_list: the plan as a quantizer ``config_list`` (weights only; add ``'input'`` / ``'output'`` to taste).
        predicted_bytes: the weights' total size under the plan (``ceil(numel * bits / 8)`` per layer).
        budget_bytes: the budget it was solved for.
        table: ``{layer: {bits: (bytes, sensitivity)}}`` the solver read.
    """

    bits: dict[str, int]
    config_list: list[dict[str, Any]]
    predicted_bytes: int
    budget_bytes: int
    table: dict[str, dict[int, tuple[int, float]]] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.to_markdown()

    def to_markdown(self) -> str:
        """One row per layer: chosen bits, then bytes and sensitivity at each candidate width."""
        widths = sorted({b for row in self.table.values() for b in row})
        lines = [f"predicted {self.predicted_bytes:,} bytes of weights (budget {self.budget_bytes:,})", "",
                 "| layer | bits | " + " | ".join(f"{b} bits: bytes / sensitivity" for b in widths) + " |",
                 "|---|---:|" + "---:|" * len(widths)]
        for layer, row in self.table.items():
            cells = [f"{row[b][0]:,} / {row[b][1]:.3g}" if b in row else "" for b in widths]
            lines.append(f"| {layer} | {self.bits[layer]} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def solve_bits(table: Mapping[str, Mapping[int, tuple[int, float]]], budget_bytes: int) -> dict[str, int]:
    """The width per layer minimising the summed sensitivity with the summed bytes at most ``budget_bytes`` (exact).

    Args:
        table: ``{layer: {bits: (bytes, sensitivity)}}``; bytes are non-negative integers.
        budget_bytes: the most bytes all layers together may take.

    Returns:
        ``{layer: bits}`` in the table's order; on equal sensitivity the wider width wins.

    Raises:
        ConfigError: a layer without candidates, or a budget below the smallest possible size (which is named).
    """
    layers = list(table)
    options = []
    for layer in layers:
        row = sorted(table[layer].items(), key=lambda item: -item[0])  # wider first: it wins ties
        if not row:
            raise ConfigError(f"mixed_precision: layer {layer!r} has no candidate width.")
        options.append([(bits, int(size), float(cost)) for bits, (size, cost) in row])
    smallest = sum(min(size for _, size, _ in row) for row in options)
    if budget_bytes < smallest:
        raise ConfigError(f"mixed_precision: budget_bytes={budget_bytes:,} is below the smallest size the candidates "
                          f"allow ({smallest:,} bytes, every layer at its narrowest). Expected a budget >= "
                          f"{smallest:,}, or narrower candidates.")
    unit = math.gcd(*[size for row in options for _, size, _ in row]) or 1
    capacity = int(budget_bytes) // unit
    best = np.zeros(capacity + 1)  # best[b]: least sensitivity of the layers so far within b units
    choices = []
    for row in options:
        stacked = np.full((len(row), capacity + 1), np.inf)
        for k, (_, size, cost) in enumerate(row):
            units = size // unit
            if units <= capacity:
                stacked[k, units:] = best[:capacity + 1 - units] + cost
        choice = np.argmin(stacked, axis=0)  # first minimum: the wider width on ties
        best = stacked[choice, np.arange(capacity + 1)]
        choices.append(choice)
    chosen, remaining = {}, capacity
    for layer, row, choice in reversed(list(zip(layers, options, choices))):
        bits, size, _ = row[int(choice[remaining])]
        chosen[layer] = bits
        remaining -= size // unit
    return {layer: chosen[layer] for layer in layers}


def _weight_bytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


def _group_sizes(group_size: int | Mapping[int, int] | None, widths: Sequence[int]) -> dict[int, int] | None:
    """``{bits: group_size}`` for every non-float width (a width missing from a mapping: -1, per channel)."""
    if group_size is None:
        return None
    per_width = dict(group_size) if isinstance(group_size, Mapping) else {b: group_size for b in widths}
    sizes = {b: int(per_width.get(b, -1)) for b in widths if b != FLOAT_BITS}
    if any(b > 8 for b in sizes) or any(g != -1 and g < 1 for g in sizes.values()):
        raise ConfigError(f"mixed_precision: with group_size, Expected candidate widths in 2..8 (or 32) and group "
                          f"sizes that are positive or -1 (WeightOnlyQuantizer's grid). Received: "
                          f"candidates={list(widths)!r}, group_size={group_size!r}")
    return sizes


def _check_groups(layers: Sequence[tuple[str, Any]], sizes: Mapping[int, int]) -> None:
    for name, module in layers:
        shape = tuple(module.weight.shape)
        bad = [g for g in sizes.values() if len(shape) == 2 and g != -1 and shape[1] % g]
        if len(shape) != 2 or bad:
            raise ConfigError(f"mixed_precision: layer {name!r} (weight {shape}) cannot take group_size="
                              f"{bad[0] if bad else next(iter(sizes.values()))}: groups need a 2-D (out, in) "
                              "weight whose input features they divide. Expected Linear layers only (op_types="
                              "('Linear',)) and a group size dividing every layer's input features, or -1.")


def _grouped_weight(weight: Any, bits: int, group_size: int) -> Any:
    """``weight`` (out, in) on :class:`WeightOnlyQuantizer`'s symmetric RTN grid, dequantized."""
    from slimkit.frameworks.torch.weight_grid import GroupGrid

    grid = GroupGrid(bits=bits, group_size=group_size, symmetric=True)
    scale, zero = grid.params(weight.detach())
    return grid.dequantize(grid.codes(weight.detach(), scale, zero), scale, zero).to(weight.dtype)


def _quantized_weight(weight: Any, bits: int) -> Any:
    """Per-channel symmetric fake quantization of ``weight`` (axis 0, narrow range), as the ``tflite`` profile."""
    import torch

    from slimkit.compression.quant import Scheme, affine_params, fake_quant_numpy

    w = weight.detach().double().numpy()
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    params = affine_params(-amax, amax, bits, Scheme(symmetric=True, per_channel=True, narrow=True), axis=0)
    return torch.as_tensor(fake_quant_numpy(w, params), dtype=weight.dtype)


def _inputs(batches: Iterable[Any]) -> list[Any]:
    out = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in batches]
    if not out:
        raise ConfigError("mixed_precision: batches is empty. Expected at least one batch of inputs.")
    return out


def mixed_precision(model: Any, batches: Iterable[Any], budget_bytes: int, candidates: Sequence[int] = (4, 8, 16),
                    op_types: Sequence[str] = ("Conv2d", "Linear"),
                    group_size: int | Mapping[int, int] | None = None) -> MixedPrecisionPlan:
    """Per-layer weight widths under ``budget_bytes`` of weights, least total output error (PyTorch).

    Args:
        model: the float model (deep-copied; never modified).
        batches: inputs (tensors, or ``(inputs, targets)`` pairs) on which sensitivity is measured.
        budget_bytes: the most bytes the selected layers' weights may take together.
        candidates: widths in bits (2..16; ``32`` allows float islands).
        op_types: the layer types to assign widths to.
        group_size: ``None`` (default): per-channel widths for ``PostTrainingQuantizer``. An int, or ``{bits: int}``
            (a width not named: -1): weight-only groups of that many input features (-1: per output channel) on
            ``WeightOnlyQuantizer``'s symmetric RTN grid; Linear layers, widths 2..8 (or 32), and the plan's
            ``config_list`` is for ``WeightOnlyQuantizer`` (``{4: 128}``: int4 in groups of 128 beside int8 per
            channel). Bytes count the codes only (``ceil(numel * bits / 8)``), not the scales.

    Returns:
        A :class:`MixedPrecisionPlan`; sensitivity is the mean squared output error with that layer alone quantized.

    Raises:
        ConfigError: a width outside 2..16 (other than 32; 2..8 with ``group_size``), no matching layer, a layer
            the groups do not fit (named), empty batches, or a budget too small.
    """
    import torch

    widths = sorted({int(b) for b in candidates})
    if not widths or any(not (2 <= b <= 16 or b == FLOAT_BITS) for b in widths):
        raise ConfigError(f"mixed_precision: Expected candidate widths in 2..16 (or 32 for float). "
                          f"Received: candidates={list(candidates)!r}")
    types = set(op_types)
    layers = [(name, module) for name, module in model.named_modules()
              if type(module).__name__ in types and isinstance(getattr(module, "weight", None), torch.Tensor)]
    if not layers:
        raise ConfigError(f"mixed_precision: no layer of the model matches op_types={list(op_types)!r}.")
    groups = _group_sizes(group_size, widths)
    if groups is not None:
        _check_groups(layers, groups)
    inputs = _inputs(batches)
    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    with torch.no_grad():
        reference = [work(x) for x in inputs]
        table: dict[str, dict[int, tuple[int, float]]] = {}
        for name, _ in layers:
            weight = modules[name].weight
            original = weight.detach().clone()
            table[name] = {}
            for bits in widths:
                size = _weight_bytes(original.numel(), bits)
                if bits == FLOAT_BITS:
                    table[name][bits] = (size, 0.0)
                    continue
                weight.copy_(_quantized_weight(original, bits) if groups is None
                             else _grouped_weight(original, bits, groups[bits]))
                error = sum(float(torch.mean((work(x) - ref) ** 2)) for x, ref in zip(inputs, reference))
                table[name][bits] = (size, error / len(inputs))
            weight.copy_(original)
    bits = solve_bits(table, budget_bytes)
    size = sum(table[n][b][0] for n, b in bits.items())
    return MixedPrecisionPlan(bits, config_for(bits, groups), size, int(budget_bytes), table)


def config_for(bits: Mapping[str, int], group_size: Mapping[int, int] | None = None) -> list[dict[str, Any]]:
    """``{layer: bits}`` as a weight ``config_list``: one dict per width, float layers excluded.

    Without ``group_size`` the dicts are for ``PostTrainingQuantizer``; with ``{bits: group_size}`` (a width not
    named: -1) they are for ``WeightOnlyQuantizer``.

    >>> config_for({'conv1': 8, 'fc': 4, 'conv2': 8, 'head': 32})
    [{'quant_types': ['weight'], 'quant_bits': {'weight': 4}, 'op_names': ['fc']}, \
{'quant_types': ['weight'], 'quant_bits': {'weight': 8}, 'op_names': ['conv1', 'conv2']}, \
{'exclude': True, 'op_names': ['head']}]
    >>> config_for({'fc1': 8, 'fc2': 4}, group_size={4: 128})
    [{'quant_bits': 4, 'group_size': 128, 'op_names': ['fc2']}, {'quant_bits': 8, 'group_size': -1, \
'op_names': ['fc1']}]
    """
    def entry(width: int) -> dict[str, Any]:
        if group_size is None:
            return {"quant_types": ["weight"], "quant_bits": {"weight": width}}
        return {"quant_bits": width, "group_size": int(group_size.get(width, -1))}

    config: list[dict[str, Any]] = [{**entry(width), "op_names": [name for name, b in bits.items() if b == width]}
                                    for width in sorted(set(bits.values()) - {FLOAT_BITS})]
    floats = [name for name, b in bits.items() if b == FLOAT_BITS]
    return config + ([{"exclude": True, "op_names": floats}] if floats else [])
