"""``'bias_correction'``: remove the mean output shift that weight quantization causes (Nagel et al., 2019, 4.2).

A layer computing ``W x + b`` with the quantized weight ``W~`` is off by ``(W~ - W) x``, whose mean over the data
per output channel, ``e_c``, is a bias the float model did not have. The technique subtracts ``e_c`` from the
layer's bias (from the BatchNorm's ``beta`` where a BatchNorm is folded into the layer: the folded bias is then
``b_folded - e_c``).

- Empirical (calibration batches given), against the float model (``reference='float'``, the default, as AIMET's
  empirical bias correction): ``e_c`` is the mean of ``conv(x~, W~)`` minus the mean of ``conv(x, W)`` over the
  batches, with ``x~`` the layer's input in the quantized model, every earlier layer already corrected (one forward,
  :func:`~slimkit.algorithms.quantization.techniques.sequential.sequential_pass`), and ``x`` its input in the float
  model (one more forward without fake quantization, the float weights AdaRound / gptq replaced put back). This removes
  the mean shift of every source at once: the layer's rounded weights, its quantized input, and what the layers
  before it left. Afterwards each channel's mean output on the calibration data is the float model's, to float
  precision (and the int32 bias grid). ``reference='weights'`` removes the weights' share alone, the mean of
  ``conv(x~, W~ - W)`` (no float forward; Nagel et al.'s formulation).
- From BatchNorm statistics (``calibrate(None)``): the layer's input is the output of a BatchNorm (+ ReLU / ReLU6)
  in channel ``c``, Gaussian with mean ``beta_c`` and deviation ``|gamma_c|``; its expectation after the activation
  is the clipped Gaussian's mean (``E[relu(z)] = sigma phi(mu / sigma) + mu Phi(mu / sigma)``) and ``e`` is
  ``(W~ - W)`` summed over the kernel window applied to it. A layer whose input does not come from such a BatchNorm
  (the first layer, a residual sum, a non-positive-homogeneous activation) is skipped with the reason.

A layer without a bias and without a folded BatchNorm is skipped (adding a bias would change the model's state
dict, which must still load into the original class).

Example:

>>> import torch
>>> from slimkit.algorithms.quantization import PostTrainingQuantizer
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4))
>>> x = torch.rand(64, 8) + 1
>>> ptq = PostTrainingQuantizer(model, [{'quant_types': ['weight'], 'quant_bits': 3, 'op_types': ['Linear']}],
...                             techniques=['bias_correction'], progress=False)
>>> float_out = torch.nn.functional.linear(x, model[0].weight, model[0].bias)
>>> ptq.calibrate([x])
>>> ptq.technique_reports[0].applied
['0']
>>> bool(((model(x) - float_out).mean(0).abs() < 1e-5).all())
True
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import torch
from torch import nn

from slimkit.algorithms.quantization.techniques.chains import find_pairs, float_modules
from slimkit.algorithms.quantization.techniques.registry import Technique, TechniqueReport, register_technique
from slimkit.algorithms.quantization.techniques.sequential import float_model, sequential_pass
from slimkit.compression.quant import QuantType
from slimkit.errors import ConfigError

REFERENCES = ("float", "weights")
"""What empirical bias correction measures the quantized layer against (:class:`BiasCorrection`)."""


def weight_error(quantizer: Any, layer: Any, float_weight: torch.Tensor) -> torch.Tensor:
    """``W~ - W``: the layer's quantized kernel weight minus its float one ``float_weight`` (masked, BatchNorm folded:
    :func:`float_weights`)."""
    return quantized_weight(quantizer, layer) - float_weight


def quantized_weight(quantizer: Any, layer: Any) -> torch.Tensor:
    """``W~``: the weight the layer's kernel computes with (masked, BatchNorm folded, fake-quantized)."""
    return layer.wrapper.kernel(quantizer, layer).weight.detach()


def float_weights(quantizer: Any, names: Any) -> dict[str, torch.Tensor]:
    """The float weight (masked, BatchNorm folded) of each layer named, the ones AdaRound / gptq rounded included."""
    with float_model(quantizer):
        return {layer.name: quantizer.backend.effective_weight(layer) for layer in quantizer.layers
                if layer.name in names}


def channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def channel_means(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``y`` over every dimension but ``dim``, in float64."""
    return y.movedim(dim, 0).reshape(y.shape[dim], -1).double().mean(1)


def mean_output(layer: Any, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The mean per output channel of the layer's op with ``weight`` (no bias) over ``x``, computed on the mean
    sample: the op is linear and its padding is the same in every sample, so ``mean_n op(x_n) == op(mean_n x_n)``,
    one sample's cost instead of the batch's."""
    module = layer.module
    mean = x.reshape(-1, x.shape[-1]) if isinstance(module, nn.Linear) else x
    out = layer.wrapper.call_module({"weight": weight, "bias": None}, (mean.mean(0, keepdim=True),), {})
    return channel_means(out, channel_dim(module))


def _bias_target(quantizer: Any, layer: Any) -> tuple[torch.Tensor | None, str | None]:
    """The tensor the correction is subtracted from, or the reason there is none."""
    bn = layer.wrapper._ref.bn
    if bn is not None:
        return (bn.bias, None) if bn.bias is not None else (None, "its folded BatchNorm has no shift (beta)")
    if getattr(layer.module, "bias", None) is None:
        return None, "it has no bias and no folded BatchNorm to take the correction"
    return layer.module.bias, None


def _gaussian_mean(mu: torch.Tensor, sigma: torch.Tensor, activation: nn.Module | None) -> torch.Tensor | None:
    """``E[f(z)]`` per channel for ``z ~ N(mu, sigma^2)`` and ``f`` the activation (None: identity)."""
    def relu_mean(m: torch.Tensor) -> torch.Tensor:
        ratio = m / sigma
        pdf = torch.exp(-0.5 * ratio * ratio) / math.sqrt(2 * math.pi)
        return sigma * pdf + m * torch.special.ndtr(ratio)

    if activation is None:
        return mu
    if type(activation) is nn.ReLU:
        return relu_mean(mu)
    if isinstance(activation, nn.ReLU6) or (type(activation) is nn.Hardtanh and
                                            (activation.min_val, activation.max_val) == (0, 6)):
        return relu_mean(mu) - relu_mean(mu - 6)
    return None


def _expected_error(dw: torch.Tensor, module: nn.Module, mean: torch.Tensor) -> torch.Tensor | None:
    """``(W~ - W)`` applied to a constant input ``mean`` per input channel (padding ignored)."""
    if isinstance(module, nn.Linear):
        return dw @ mean
    groups = module.groups
    if groups == 1:
        return dw.flatten(2).sum(2) @ mean
    if groups == module.in_channels:
        return dw.flatten(1).sum(1) * mean.repeat_interleave(dw.shape[0] // mean.numel())
    return None


@register_technique("bias_correction")
class BiasCorrection(Technique):
    """Empirical bias correction on the calibration batches, or from BatchNorm statistics without batches.

    Args:
        reference: with batches, what each layer's mean output is corrected to: ``'float'``, the float model's (every
            source of shift); ``'weights'``, the quantized layer's with float weights on the same quantized input
            (the weights' rounding alone).

    Example:

    >>> from slimkit.algorithms.quantization.techniques import BiasCorrection
    >>> BiasCorrection.stage, BiasCorrection().reference, BiasCorrection(reference='weights').reference
    ('quantized', 'float', 'weights')
    """

    stage: ClassVar[str] = "quantized"

    def __init__(self, reference: str = "float"):
        if reference not in REFERENCES:
            raise ConfigError(f"BiasCorrection: Expected reference to be one of {list(REFERENCES)}. Received: "
                              f"reference={reference!r}")
        self.reference = reference

    def apply(self, quantizer: Any, batches: list[Any] | None) -> TechniqueReport:
        start = time.perf_counter()
        report = TechniqueReport(self.name)
        layers = [layer for layer in quantizer.layers if quantizer.quantizes(layer, QuantType.QUANT_WEIGHT)]
        targets = {}
        for layer in layers:
            target, reason = _bias_target(quantizer, layer)
            if target is None:
                report.skipped[layer.name] = reason
            else:
                targets[layer.name] = target
        shifts: dict[str, float] = {}
        if batches:
            self._empirical(quantizer, batches, targets, shifts)
            report.details["mode"] = "empirical"
            report.details["reference"] = self.reference
        else:
            self._from_bn(quantizer, targets, shifts, report.skipped)
            report.details["mode"] = "bn_statistics"
        report.applied = [layer.name for layer in layers if layer.name in shifts]
        report.details["max_shift"] = shifts
        report.seconds = time.perf_counter() - start
        return report

    def _empirical(self, quantizer: Any, batches: list[Any], targets: dict[str, torch.Tensor],
                   shifts: dict[str, float]) -> None:
        floats = float_weights(quantizer, targets)
        reference: dict[str, torch.Tensor] = {}

        def record(layer: Any, x: torch.Tensor) -> None:  # the float model's mean output, channel by channel
            if layer.name in targets:
                reference[layer.name] = mean_output(layer, floats[layer.name], x)

        if self.reference == "float":
            with float_model(quantizer):
                sequential_pass(quantizer, batches, record)

        def visit(layer: Any, x: torch.Tensor) -> None:
            target = targets.get(layer.name)
            if target is None:
                return
            if self.reference == "float":
                shift = mean_output(layer, quantized_weight(quantizer, layer), x) - reference[layer.name]
            else:
                shift = mean_output(layer, weight_error(quantizer, layer, floats[layer.name]), x)
            target.sub_(shift.to(target.dtype))
            shifts[layer.name] = float(shift.abs().max())

        sequential_pass(quantizer, batches, visit)

    def _from_bn(self, quantizer: Any, targets: dict[str, torch.Tensor], shifts: dict[str, float],
                 skipped: dict[str, str]) -> None:
        if quantizer.graph_plan is None:
            for name in targets:
                skipped[name] = "without batches its input statistics come from the BatchNorm before it, found on " \
                                "the captured graph: give the quantizer dummy_input"
            return
        modules = float_modules(quantizer)
        feeding = {pair.second: pair for pair in find_pairs(modules, quantizer.graph_plan.captured)[0] if pair.bn}
        by_name = {layer.name: layer for layer in quantizer.layers}
        floats = float_weights(quantizer, targets)
        with torch.no_grad():
            for name, target in targets.items():
                pair, layer = feeding.get(name), by_name[name]
                if pair is None:
                    skipped[name] = "without batches its input must be a BatchNorm's output (+ ReLU / ReLU6) used " \
                                    "only by it, to take the input's mean from the BatchNorm's statistics"
                    continue
                bn = modules[pair.bn]
                if bn.weight is None or bn.bias is None:
                    skipped[name] = f"BatchNorm {pair.bn!r} before it has no affine scale / shift to read"
                    continue
                activation = modules[pair.activation] if pair.activation else None
                mean = _gaussian_mean(bn.bias.double(), bn.weight.double().abs().clamp_min(1e-12), activation)
                error = None if mean is None else _expected_error(weight_error(quantizer, layer, floats[name]).double(),
                                                                   layer.module, mean)
                if error is None:
                    skipped[name] = f"the expectation through {type(activation).__name__} / {layer.type} " \
                                    "(groups) is not implemented"
                    continue
                target.sub_(error.to(target.dtype))
                shifts[name] = float(error.abs().max())


__all__ = ["BiasCorrection"]
