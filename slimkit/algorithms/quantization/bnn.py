"""BNNQuantizer: binarized neural networks (Courbariaux, Hubara et al., 2016)."""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.compression import QuantGrad, Quantizer, QuantType
from slimkit.compression.quant import QParams
from slimkit.compression.quantizer import traceable


class ClipGrad(QuantGrad):
    """Straight-through gradient cancelled where ``|x| > 1`` (the hard-tanh STE of BNN)."""

    @staticmethod
    @traceable
    def quant_backward(tensor: Any, grad_output: Any, quant_type: QuantType, **kwargs: Any) -> Any:
        return kwargs["ops"].zero_grad_where_abs_above(tensor, grad_output, 1.0)


class BNNQuantizer(Quantizer):
    """Binarize weights and activations to ``sign(x)`` (``sign(0) = +1``) with the clipped
    straight-through gradient ``g * 1{|x| <= 1}``. ``quant_types`` may name ``weight``, ``input``,
    ``output``; bits are 1.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.quantization import BNNQuantizer
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[0.5, -2.0, 0.0]]))
    >>> model = BNNQuantizer(model, [{'quant_types': ['weight'], 'op_types': ['Linear']}]).compress()
    >>> model[0].quantized_weight().tolist()
    [[1.0, -1.0, 1.0]]
    """

    def __init__(self, model: Any, config_list: list[dict], optimizer: Any = None, dummy_input: Any = None,
                 *, profile: str = "tflite"):
        super().__init__(model, config_list, optimizer=optimizer, dummy_input=dummy_input, profile=profile)
        self.quant_grad = ClipGrad

    def _sign(self, layer: Any, x: Any, key: str) -> Any:
        self.params[layer.name][key] = QParams(1, np.array([2.0]), np.array([0]), -1, 0)
        return self.ops.sign_ste(x)

    @traceable
    def quantize_weight(self, weight: Any, config: Any, **kwargs: Any) -> Any:
        return self._sign(kwargs["layer"], weight, "weight")

    @traceable
    def quantize_output(self, output: Any, config: Any, **kwargs: Any) -> Any:
        return self._sign(kwargs["layer"], output, "output")

    @traceable
    def quantize_input(self, *inputs: Any, config: Any, **kwargs: Any) -> Any:
        quantized = self._sign(kwargs["layer"], inputs[0], "input")
        return (quantized, *inputs[1:]) if len(inputs) > 1 else quantized
