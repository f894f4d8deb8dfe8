"""NaiveQuantizer: int8 weights with a max-abs scale, nothing else (NNI's NaiveQuantizer)."""

from __future__ import annotations

from typing import Any

from slimkit.compression import Layer, Quantizer
from slimkit.errors import ConfigError


class NaiveQuantizer(Quantizer):
    """Fake-quantize weights to ``quant_bits`` (default 8) with ``scale = max|w_c| / qmax`` per output
    channel (per tensor under a profile without per-channel weights); activations stay float.

    Args:
        model: a ``torch.nn.Module``.
        config_list: dicts with ``quant_types: ['weight']`` and ``op_types`` / ``op_names``.
        profile: target profile (default ``'tflite'``: q in [-127, 127]).

    Example:

    >>> import torch
    >>> from slimkit.algorithms.quantization import NaiveQuantizer
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[1.27, 0.333]]))
    >>> model = NaiveQuantizer(model, [{'quant_types': ['weight'], 'op_types': ['Linear']}]).compress()
    >>> [round(v, 4) for v in model[0].quantized_weight().flatten().tolist()]
    [1.27, 0.33]
    """

    def validate_layer(self, layer: Layer) -> None:
        super().validate_layer(layer)
        if tuple(layer.config.quant_types) != ("weight",):
            raise ConfigError(f"NaiveQuantizer: config_list[{layer.config.index}]['quant_types'] is invalid. "
                              f"Expected ['weight'] (NaiveQuantizer quantizes weights only). "
                              f"Received: quant_types={list(layer.config.quant_types)!r}")

    def should_fake_quant(self, layer: Any) -> bool:
        return True
