"""Group-wise integer grids for weight-only quantization of 2-D weights (``out x in``).

A weight row is split into groups of ``group_size`` consecutive input features (``-1``: the whole
row); each group has its own scale (and, asymmetric, zero point). Symmetric grids hold
``q`` in ``[-2**(bits-1), 2**(bits-1) - 1]`` with ``scale = max|w| / (2**(bits-1) - 1)``; asymmetric
grids hold ``q`` in ``[0, 2**bits - 1]`` with ``scale = (max - min) / (2**bits - 1)`` over a range
that includes 0, and ``zero = round(-min / scale)``. The dequantized weight is
``(q - zero) * scale``: round to nearest (RTN) is :meth:`GroupGrid.rtn`.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.weight_grid import GroupGrid
>>> grid = GroupGrid(bits=4, group_size=2, symmetric=True)
>>> w = torch.tensor([[0.7, -0.35, 0.1, 0.2]])
>>> scale, zero = grid.params(w)
>>> scale.tolist()
[[0.10000000149011612, 0.02857142873108387]]
>>> grid.codes(w, scale, zero).tolist()
[[7, -4, 4, 7]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupGrid:
    """A group-wise integer grid.

    Args:
        bits: bit width (2-8).
        group_size: input features per group, or -1 for one group per output row.
        symmetric: zero point 0 and a signed range; else an unsigned range with a zero point.
    """

    bits: int
    group_size: int
    symmetric: bool = True

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1

    def group_count(self, in_features: int) -> int:
        return 1 if self.group_size == -1 else in_features // self.group_size

    def groups(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` (out, in) viewed as (out, groups, group_size)."""
        out_features, in_features = weight.shape
        return weight.reshape(out_features, self.group_count(in_features), -1)

    def params(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group ``(scale, zero)``, each of shape (out, groups), from ``weight`` (out, in)."""
        groups = self.groups(weight)
        if self.symmetric:
            scale = groups.abs().amax(dim=-1) / self.qmax
            zero = torch.zeros_like(scale)
        else:
            low = groups.amin(dim=-1).clamp(max=0)
            high = groups.amax(dim=-1).clamp(min=0)
            scale = (high - low) / self.qmax
            zero = torch.round(-low / torch.where(scale > 0, scale, torch.ones_like(scale)))
        return torch.where(scale > 0, scale, torch.ones_like(scale)), zero

    def expand(self, per_group: torch.Tensor, in_features: int) -> torch.Tensor:
        """A per-group (out, groups) tensor repeated to per-weight (out, in)."""
        return per_group.repeat_interleave(in_features // per_group.shape[1], dim=1)

    @property
    def code_dtype(self) -> torch.dtype:
        """int8 for symmetric codes, uint8 for asymmetric ones (up to 255 at 8 bits)."""
        return torch.int8 if self.symmetric else torch.uint8

    def codes(self, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``weight`` on the grid (round half to even), as a :attr:`code_dtype` tensor."""
        columns = weight.shape[1]
        q = torch.round(weight / self.expand(scale, columns)) + self.expand(zero, columns)
        return q.clamp(self.qmin, self.qmax).to(self.code_dtype)

    def dequantize(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """``(codes - zero) * scale`` as a float tensor of ``scale``'s dtype."""
        columns = codes.shape[1]
        return (codes.to(scale.dtype) - self.expand(zero, columns)) * self.expand(scale, columns)

    def rtn(self, weight: torch.Tensor) -> torch.Tensor:
        """Round to nearest: ``weight`` replaced by its nearest grid value (its own group parameters)."""
        scale, zero = self.params(weight)
        return self.dequantize(self.codes(weight, scale, zero), scale, zero)
