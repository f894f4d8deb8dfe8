"""AWQ (Lin et al., 2024): activation-aware scaling of a weight's input features before rounding, then a search
for each group's clipping range (the paper's ``auto_clip``).

Example:

>>> import torch
>>> from slimkit.algorithms.quantization.awq import awq
>>> from slimkit.frameworks.torch.weight_grid import GroupGrid
>>> weight = torch.tensor([[0.5, -0.02, 0.3, 0.01]])
>>> salience = torch.tensor([0.1, 10.0, 0.1, 10.0])
>>> hessian = torch.diag(salience.double() ** 2)
>>> codes, scale, zero, factors = awq(weight, salience, hessian, GroupGrid(bits=3, group_size=-1))
>>> bool(factors[1] > factors[0])
True
"""

from __future__ import annotations

import torch

from slimkit.algorithms.quantization.gptq import output_error
from slimkit.frameworks.torch.weight_grid import GroupGrid


def awq(weight: torch.Tensor, salience: torch.Tensor, hessian: torch.Tensor, grid: GroupGrid,
        steps: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """AWQ (Lin et al., 2024): scale input feature ``j`` of the weight by ``s_j = salience_j ** alpha`` before
    rounding (and the input by ``1 / s_j``), ``alpha`` searched on a grid of ``steps`` values in [0, 1) for the
    least output error on the calibration inputs. ``alpha = 0`` is round to nearest, so AWQ is never worse
    than it on those inputs. The clipping ranges are then searched by :func:`clip_search` on the scaled weight
    (whose inputs are ``x / input_scale``), which never increases that error.

    Returns ``(codes, scale, zero, input_scale)``: the codes quantize ``weight * input_scale``; the layer
    computes ``(x / input_scale) @ dequantized.T``, which in float is the original layer.
    """
    salience = salience.to(weight.dtype).clamp(min=torch.finfo(weight.dtype).tiny)
    best: tuple[float, torch.Tensor] | None = None
    for index in range(steps):
        factors = salience ** (index / steps)
        factors = factors / (factors.max() * factors.min()).sqrt()
        error = output_error(weight, grid.rtn(weight * factors) / factors, hessian)
        if best is None or error < best[0]:
            best = (error, factors)
    factors = best[1]
    scaled = weight * factors
    scale, zero = clip_search(scaled, hessian.to(torch.float64) / torch.outer(factors, factors).to(torch.float64), grid)
    return grid.codes(scaled, scale, zero), scale, zero, factors


CLIP_RATIOS = tuple(1 - index / 20 for index in range(1, 10))
"""The clipping ratios tried besides 1 (no clipping): 0.95 down to 0.55, as AWQ's ``auto_clip`` (20 steps, half
the range at most)."""


def clip_search(weight: torch.Tensor, hessian: torch.Tensor, grid: GroupGrid,
                ratios: tuple[float, ...] = CLIP_RATIOS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output row and group, the clipping of the group's range that least changes the layer's output on its
    calibration inputs: the grid's scale times a ratio from ``ratios`` (the zero point, and so the share of the
    range on each side of zero, is kept; weights beyond the clipped range take the end codes).

    Each group is chosen by its own part of the output error, ``d_g^T H_gg d_g`` (``H_gg``: the group's diagonal
    block of ``hessian``, as ``auto_clip`` measures each group's own output), then each row keeps the unclipped
    scales if its whole error ``d^T H d`` would grow: clipping never increases the output error on those inputs.

    Returns ``(scale, zero)`` shaped as :meth:`GroupGrid.params`.

    Example:

    >>> weight = torch.tensor([[0.3, -0.3, 0.3, 1.0]])      # an outlier on a rarely active input
    >>> hessian = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.01])).double()
    >>> grid = GroupGrid(bits=2, group_size=-1)
    >>> grid.params(weight)[0].tolist(), grid.rtn(weight).tolist()          # unclipped: the 0.3s round to 0
    ([[1.0]], [[0.0, 0.0, 0.0, 1.0]])
    >>> scale, zero = clip_search(weight, hessian, grid)
    >>> round(float(scale[0, 0]), 4), grid.dequantize(grid.codes(weight, scale, zero), scale, zero).tolist()
    (0.55, [[0.550000011920929, -0.550000011920929, 0.550000011920929, 0.550000011920929]])
    """
    hessian = hessian.to(torch.float64)
    scale, zero = grid.params(weight)
    rows, columns = weight.shape
    groups = grid.group_count(columns)
    size = columns // groups
    blocks = hessian.reshape(groups, size, groups, size).diagonal(dim1=0, dim2=2).permute(2, 0, 1)

    def errors(candidate: torch.Tensor) -> torch.Tensor:  # (rows, groups): each group's own output error
        delta = (weight - grid.dequantize(grid.codes(weight, candidate, zero), candidate, zero)).to(torch.float64)
        delta = delta.reshape(rows, groups, size).transpose(0, 1)  # (groups, rows, size)
        return ((delta @ blocks) * delta).sum(-1).T

    best_scale, best_error = scale, errors(scale)
    for ratio in ratios:
        candidate = scale * ratio
        error = errors(candidate)
        better = error < best_error
        best_scale = torch.where(better, candidate, best_scale)
        best_error = torch.where(better, error, best_error)

    def row_errors(candidate: torch.Tensor) -> torch.Tensor:
        delta = (weight - grid.dequantize(grid.codes(weight, candidate, zero), candidate, zero)).to(torch.float64)
        return ((delta @ hessian) * delta).sum(-1)

    worse = row_errors(best_scale) > row_errors(scale)
    return torch.where(worse[:, None], scale, best_scale), zero
