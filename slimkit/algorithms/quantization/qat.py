"""QATQuantizer: quantization-aware training (Jacob et al., 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from slimkit.compression import ConfigKey, Layer, Quantizer
from slimkit.compression.config import NON_NEGATIVE_INT
from slimkit.compression.observers import EMAObserver, Observer
from slimkit.compression.quantizer import QUANTIZER_KEYS


class QATQuantizer(Quantizer):
    """Quantization-aware training: fake-quantized weights and activations in the forward pass,
    straight-through gradients, activation ranges tracked by exponential moving averages of the
    batch min / max (decay ``ema_decay``), BatchNorm folded into the preceding conv (needs
    ``dummy_input``), and quantization switched on after ``quant_start_step`` optimizer steps
    (ranges are tracked from the start).

    Args:
        model: a ``torch.nn.Module``.
        config_list: dicts with ``quant_types``, ``quant_bits``, optional ``quant_start_step``
            (default 0) and ``quantize_op_action``.
        optimizer: steps are counted on ``optimizer.step()`` (else call :meth:`step` per batch).
        dummy_input: example input: enables BN folding, conv+BN+ReLU fusion, per-call ranges.
        profile: target profile name (default ``'tflite'``).
        ema_decay: decay of the range moving averages (default 0.99).

    Example:

    >>> import torch
    >>> from slimkit.algorithms.quantization import QATQuantizer
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    >>> config_list = [{'quant_types': ['weight', 'output'], 'op_types': ['Linear']}]
    >>> quantizer = QATQuantizer(model, config_list, dummy_input=torch.randn(2, 4))
    >>> model = quantizer.compress()
    >>> _ = model(torch.randn(8, 4))
    >>> calibration = quantizer.export_model('/tmp/slimkit_qat_doctest.pth')
    >>> len(calibration['0']['weight_scale']), calibration['0']['fused_activation']
    (3, 'relu')
    """

    config_keys: ClassVar[Mapping[str, ConfigKey]] = {
        **QUANTIZER_KEYS, "quant_start_step": ConfigKey(NON_NEGATIVE_INT, "an int >= 0", 0)}
    fold_bn = True

    def __init__(self, model: Any, config_list: list[dict], optimizer: Any = None, dummy_input: Any = None,
                 *, profile: str = "tflite", ema_decay: float = 0.99):
        super().__init__(model, config_list, optimizer=optimizer, dummy_input=dummy_input, profile=profile)
        self.ema_decay = ema_decay
        self.steps = 0
        self._counts_optimizer = False
        if optimizer is not None and hasattr(optimizer, "register_step_post_hook"):
            optimizer.register_step_post_hook(lambda *args, **kwargs: self._count_step())
            self._counts_optimizer = True

    def _count_step(self) -> None:
        self.steps += 1
        if any(self.steps == (layer.config.quant_start_step or 0) for layer in self.layers):
            self.state_changed()  # fake quantization switches on for some layers

    def step(self) -> None:
        """Count one training step (when no optimizer was given to count them)."""
        if not self._counts_optimizer:
            self._count_step()

    def collect_state(self) -> dict[str, Any]:
        """The base state and the step counter that ``quant_start_step`` is compared with."""
        return {**super().collect_state(), "steps": self.steps}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])  # before the base pushes the switches (Keras)
        super().restore_state(state)

    def make_observer(self, layer: Layer, key: str) -> Observer:
        return EMAObserver(self.ema_decay)

    def should_observe(self, layer: Layer) -> bool:
        return not self.frozen and self.observing and bool(getattr(layer.module, "training", True))

    def should_fake_quant(self, layer: Layer) -> bool:
        return self.steps >= (layer.config.quant_start_step or 0)


QAT_Quantizer = QATQuantizer
