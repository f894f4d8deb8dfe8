"""DoReFaQuantizer: the weight quantization of DoReFa-Net (Zhou et al., 2016)."""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.compression import Layer, Quantizer
from slimkit.compression.quant import QParams, QuantType
from slimkit.compression.quantizer import differentiable, traceable


class DoReFaQuantizer(Quantizer):
    """DoReFa-Net quantization with ``k = quant_bits``:

    - weights: ``w_q = 2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``,
    - inputs / outputs: ``quantize_k(clamp(x, 0, 1))``,

    where ``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)``; ``round`` has a straight-through
    gradient, ``tanh`` and the division are differentiated as usual.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.quantization import DoReFaQuantizer
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False))
    >>> q = DoReFaQuantizer(model, [{'quant_types': ['weight'], 'quant_bits': 2, 'op_types': ['Linear']}])
    >>> w = torch.tensor([[1.0, -0.2]])
    >>> [round(v, 4) for v in q.quantize_weight(w, None, layer=q.layers[0]).flatten().tolist()]
    [1.0, -0.3333]
    """

    @differentiable
    @traceable
    def quantize_weight(self, weight: Any, config: Any, **kwargs: Any) -> Any:
        layer: Layer = kwargs["layer"]
        bits = self.states[layer.name].bits[QuantType.QUANT_WEIGHT]
        levels = 2 ** bits - 1
        ops = self.ops
        t = ops.tanh(weight)
        r = t / (2 * ops.abs_max(t)) + 0.5
        quantized = 2 * (ops.round_ste(r * levels) / levels) - 1
        self.params[layer.name]["weight"] = _grid_params(bits)
        return quantized

    @differentiable
    @traceable
    def quantize_output(self, output: Any, config: Any, **kwargs: Any) -> Any:
        return self._quantize_activation(kwargs["layer"], output, QuantType.QUANT_OUTPUT)

    @differentiable
    @traceable
    def quantize_input(self, *inputs: Any, config: Any, **kwargs: Any) -> Any:
        quantized = self._quantize_activation(kwargs["layer"], inputs[0], QuantType.QUANT_INPUT)
        return (quantized, *inputs[1:]) if len(inputs) > 1 else quantized

    def _quantize_activation(self, layer: Layer, x: Any, qtype: QuantType) -> Any:
        bits = self.states[layer.name].bits[qtype]
        levels = 2 ** bits - 1
        self.params[layer.name][qtype.value] = QParams(bits, np.array([1.0 / levels]), np.array([0]), 0, levels)
        return self.ops.round_ste(self.ops.clamp(x, 0.0, 1.0) * levels) / levels


def _grid_params(bits: int) -> QParams:
    """DoReFa weights lie on ``2 j / (2^k - 1) - 1``: scale ``2 / (2^k - 1)`` around a half-integer zero point,
    recorded as scale ``2/(2^k-1)``, q in ``[0, 2^k - 1]``, ``zero_point`` rounded down (the exact value is
    ``(2^k - 1) / 2``)."""
    levels = 2 ** bits - 1
    return QParams(bits, np.array([2.0 / levels]), np.array([levels // 2]), 0, levels)
