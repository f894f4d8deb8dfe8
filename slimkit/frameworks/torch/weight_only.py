"""The PyTorch side of weight-only quantization: a Linear whose weight lives as group-wise integer codes.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.weight_grid import GroupGrid
>>> from slimkit.frameworks.torch.weight_only import WeightOnlyWrapper
>>> linear = torch.nn.Linear(4, 2, bias=False)
>>> grid = GroupGrid(bits=4, group_size=2)
>>> scale, zero = grid.params(linear.weight.detach())
>>> wrapper = WeightOnlyWrapper(linear, 'fc', grid, grid.codes(linear.weight.detach(), scale, zero), scale, zero)
>>> torch.equal(wrapper.quantized_weight(), grid.rtn(linear.weight.detach()))
True
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.frameworks.torch.weight_grid import GroupGrid
from slimkit.frameworks.torch.wrapper import CompressionWrapper


class WeightOnlyWrapper(CompressionWrapper):
    """Runs ``module`` (a Linear) with its weight replaced by ``(codes - zero) * scale / input_scale``.

    Args:
        module: the Linear layer (kept unchanged as the child ``module``: unwrapping restores it).
        layer_name: its qualified name.
        grid: the :class:`GroupGrid` of the codes.
        codes: integer codes, (out, in): int8 (symmetric) or uint8 (asymmetric).
        scale, zero: per-group parameters, (out, groups).
        input_scale: AWQ's per-input-feature factors (the codes quantize ``weight * input_scale``), or None.
        transposed: the layer stores its weight as ``(in, out)`` (GPT-2's ``Conv1D``); codes, scales and
            :meth:`quantized_weight` are always ``(out, in)``.

    Buffers ``weight_codes``, ``weight_scale``, ``weight_zero_point`` and ``input_scale`` travel with the
    model's state dict.
    """

    def __init__(self, module: nn.Module, layer_name: str, grid: GroupGrid, codes: torch.Tensor,
                 scale: torch.Tensor, zero: torch.Tensor, input_scale: torch.Tensor | None = None,
                 transposed: bool = False):
        super().__init__(module, layer_name)
        self.grid = grid
        self.transposed = transposed
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero)
        self.register_buffer("input_scale", input_scale)
        self._cached: tuple[tuple, torch.Tensor] | None = None

    def _buffers_state(self) -> tuple:
        tensors = (self.weight_codes, self.weight_scale, self.weight_zero_point, self.input_scale)
        return tuple((id(t), t._version, t.device) if t is not None else None for t in tensors)

    def quantized_weight(self) -> torch.Tensor:
        """The weight the layer computes with: the grid values, divided by AWQ's input factors if any.

        Computed once and reused until a buffer changes (loaded, moved or written in place).
        """
        state = self._buffers_state()
        if self._cached is None or self._cached[0] != state:
            weight = self.grid.dequantize(self.weight_codes, self.weight_scale, self.weight_zero_point)
            self._cached = (state, weight / self.input_scale if self.input_scale is not None else weight)
        return self._cached[1]

    def native_weight(self) -> torch.Tensor:
        """:meth:`quantized_weight` in the layer's own weight layout."""
        return self.quantized_weight().T if self.transposed else self.quantized_weight()

    def effective_parameters(self) -> dict[str, torch.Tensor]:
        overrides = super().effective_parameters()
        weight = self.native_weight()
        overrides["weight"] = weight * self.weight_mask if self.weight_mask is not None else weight
        return overrides

    def extra_repr(self) -> str:
        return f"layer_name={self.layer_name!r}, {self.grid}"
