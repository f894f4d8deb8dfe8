"""GPTQ (Frantar et al., 2023): quantize a weight column by column, spreading each column's rounding error
over the columns not yet quantized, weighted by the inverse Hessian of the layer's output error.

The Hessian is ``X^T X`` of the layer's calibration inputs (:mod:`slimkit.frameworks.torch.layer_inputs`).
Columns are processed in blocks (the error of a block reaches later columns in one matrix product); group
parameters are taken from the updated weights when a group starts (or, with ``act_order``, from the weights
before any update). With an identity Hessian no error is spread and the result is round to nearest.

Example:

>>> import torch
>>> from slimkit.algorithms.quantization.gptq import gptq
>>> from slimkit.frameworks.torch.weight_grid import GroupGrid
>>> grid = GroupGrid(bits=4, group_size=-1)
>>> weight = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
>>> codes, scale, zero = gptq(weight, torch.eye(8, dtype=torch.float64), grid)
>>> torch.equal(grid.dequantize(codes, scale, zero), grid.rtn(weight))
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slimkit.frameworks.torch.weight_grid import GroupGrid
from slimkit.utils.threads import single_thread


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper Cholesky factor of the dampened inverse Hessian, and the mask of dead input features.

    Features that never saw a nonzero input (zero diagonal) get a unit diagonal, so they do not make the
    Hessian singular; ``dampening`` times the mean diagonal is added to the diagonal. ``hessian`` may carry leading
    batch dimensions (one Hessian per group of a grouped convolution): each is treated on its own.
    """
    hessian = hessian.clone()
    diagonal = hessian.diagonal(dim1=-2, dim2=-1)
    dead = diagonal == 0
    diagonal[dead] = 1.0
    diagonal.add_(dampening * diagonal.mean(-1, keepdim=True))
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    return torch.linalg.cholesky(inverse, upper=True), dead


def gptq(weight: torch.Tensor, hessian: torch.Tensor, grid: GroupGrid, dampening: float = 0.01,
         act_order: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` (out, in) on ``grid`` with GPTQ; returns ``(codes, scale, zero)`` as
    :meth:`GroupGrid.codes` / :meth:`GroupGrid.params` shape them.

    ``act_order``: visit the columns in order of decreasing Hessian diagonal (the inputs with the most energy
    first, while the most columns are left to absorb their error). The groups stay consecutive input features:
    their parameters are then taken from the weights before any update ("static groups"), as they are for
    ``group_size=-1``.
    """
    work = weight.detach().to(torch.float64).clone()
    hessian = hessian.to(torch.float64)
    rows, columns = work.shape
    dtype = weight.dtype  # grid parameters and codes in the weight's own precision, as round to nearest
    static = act_order or grid.group_size == -1
    scale = torch.empty(rows, grid.group_count(columns), dtype=dtype, device=work.device)
    zero = torch.empty_like(scale)
    if static:
        scale[:], zero[:] = grid.params(weight.detach())
    order = (torch.argsort(hessian.diagonal(), descending=True, stable=True) if act_order
             else torch.arange(columns, device=work.device))
    factor, dead = inverse_hessian_factor(hessian[order][:, order], dampening)
    work = work[:, order]
    work[:, dead] = 0.0
    size = grid.group_size if grid.group_size != -1 else columns
    codes = torch.empty(rows, columns, dtype=grid.code_dtype, device=work.device)

    def quantize(block: torch.Tensor, offset: int, index: int) -> torch.Tensor:
        column = int(order[index])
        group = column // size
        if not static and column % size == 0:  # the group's parameters from its columns as updated so far
            scale[:, group:group + 1], zero[:, group:group + 1] = grid.params(block[:, offset:offset + size].to(dtype))
        group_scale, group_zero = scale[:, group:group + 1], zero[:, group:group + 1]
        code = grid.codes(block[:, offset:offset + 1].to(dtype), group_scale, group_zero)
        codes[:, column:column + 1] = code
        return grid.dequantize(code, group_scale, group_zero).to(torch.float64)[:, 0]

    step = size * max(1, -(-128 // size)) if not static else 128  # a group never straddles two blocks
    sweep_columns(work, factor, step, quantize)
    return codes, scale, zero


def sweep_columns(work: torch.Tensor, factor: torch.Tensor, step: int,
                  visit: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """The optimal-brain-surgeon sweep GPTQ and SparseGPT share, on one thread (its many small ops lose more to
    thread hand-offs than they gain): columns of ``work`` left to right in blocks of ``step``; ``visit(block,
    offset, index)`` returns the new values of the block's column ``offset`` (column ``index`` of ``work``), and
    their error, divided by the inverse-Hessian factor's diagonal, is spread over the columns not visited yet
    (within the block at once, beyond it in one product per block). ``work`` ends holding the new values.
    ``work`` ``(..., rows, columns)`` and ``factor`` ``(..., columns, columns)`` may carry the same leading batch
    dimensions (independent sweeps, one per group)."""
    columns = work.shape[-1]
    with single_thread():
        for start in range(0, columns, step):
            end = min(start + step, columns)
            block = work[..., start:end].clone()
            errors = torch.zeros_like(block)
            block_factor = factor[..., start:end, start:end]
            for offset in range(end - start):
                values = block[..., offset].clone()
                new = visit(block, offset, start + offset)
                error = (values - new) / block_factor[..., offset, offset, None]
                block[..., offset:] -= error[..., None] * block_factor[..., offset, offset:][..., None, :]
                block[..., offset] = new
                errors[..., offset] = error
            work[..., start:end] = block
            work[..., end:] -= errors @ factor[..., start:end, end:]


def output_error(weight: torch.Tensor, approximation: torch.Tensor, hessian: torch.Tensor) -> float:
    """``trace((W - A) H (W - A)^T)``: the mean squared output error of ``approximation`` on the inputs
    ``hessian`` was gathered from."""
    delta = (weight - approximation).detach().to(torch.float64)
    return float(((delta @ hessian.to(torch.float64)) * delta).sum())

