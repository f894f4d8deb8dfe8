"""AWQ (Lin et al., 2024): activation-aware scaling of a weight's input features before rounding.

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
    than it on those inputs.

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
    scale, zero = grid.params(weight * factors)
    return grid.codes(weight * factors, scale, zero), scale, zero, factors
