"""``'gptq'``: Hessian-based rounding of each conv / linear layer's weights on the quantizer's own grid (GPTQ,
Frantar et al., 2023, applied to the weights of a fully quantized model).

Per layer, on its inputs from the calibration batches as the quantized model delivers them (earlier layers already
rounded: :func:`~slimkit.algorithms.quantization.techniques.sequential.sequential_pass`), the Hessian of the layer's
output error is ``H = X^T X`` of its input patches (a convolution's unfolded windows: one Hessian per group, so a
depthwise conv has one small ``k*k`` Hessian per channel). The weights are rounded column by column onto the
layer's fixed grid (the quantizer's per-channel or per-tensor scale, its ``qmin`` / ``qmax``), each column's rounding
error spread over the columns not rounded yet (:func:`~slimkit.algorithms.quantization.gptq.sweep_columns`). The
float weights are written back as the rounded values (BatchNorm folded in where the quantizer folds it, divided out
again for the stored weight) and the weight parameters pinned, as AdaRound does; where the result has a larger
output error on the calibration inputs than nearest rounding, the layer keeps nearest rounding. Run
``'bias_correction'`` after it: it measures against the float weights this technique replaced.

Unlike AdaRound's per-layer optimisation, the cost is one Hessian and one sweep per layer (no iterations).
Positions are sampled (``samples`` per layer at most) to bound the Hessian's cost on large feature maps.

Example:

>>> import torch
>>> from slimkit.algorithms.quantization import PostTrainingQuantizer
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(16, 4))
>>> ptq = PostTrainingQuantizer(model, [{'quant_types': ['weight'], 'quant_bits': 4, 'op_types': ['Linear']}],
...                             techniques=['gptq'], progress=False)
>>> ptq.calibrate([torch.randn(64, 16) @ torch.randn(16, 16)])
>>> details = ptq.technique_reports[0].details
>>> details['error']['0'] < details['error_nearest']['0']
True
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from slimkit.algorithms.quantization.gptq import inverse_hessian_factor, sweep_columns
from slimkit.algorithms.quantization.techniques.registry import Technique, TechniqueReport, register_technique
from slimkit.algorithms.quantization.techniques.sequential import sequential_pass
from slimkit.compression.channels import channel_view
from slimkit.compression.quant import QuantType
from slimkit.errors import ConfigError
from slimkit.frameworks.torch.quant_backend import bn_factor

ROUNDED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""The layer types whose input windows :func:`input_rows` unfolds."""


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer's weight multiplies, ``(groups, positions, in_per_group * kernel)``: a Linear's input
    features, a convolution's unfolded input windows (in the order of ``weight.flatten(1)``)."""
    if isinstance(module, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    if isinstance(module, nn.Conv1d):  # as a conv2d of height 1
        x, kernel = x.unsqueeze(2), (1, module.kernel_size[0])
        dilation, padding, stride = (1, module.dilation[0]), (0, module.padding[0]), (1, module.stride[0])
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    windows = F.unfold(x, kernel, dilation, padding, stride)  # (n, in * kernel, positions)
    groups = module.groups
    return windows.reshape(x.shape[0], groups, -1, windows.shape[-1]).permute(1, 0, 3, 2).reshape(
        groups, -1, windows.shape[1] // groups)


@register_technique("gptq")
class GPTQRounding(Technique):
    """GPTQ rounding of each quantized conv / linear layer's weights on its fixed grid.

    Args:
        dampening: added to the Hessian's diagonal, times its mean (GPTQ's ``percdamp``).
        samples: input positions (rows of a Linear input, windows of a conv input) per layer at most, drawn at random
            (seeded) when there are more.
        block: columns per block of the sweep.

    Example:

    >>> from slimkit.algorithms.quantization.techniques import GPTQRounding
    >>> GPTQRounding(samples=4096).samples
    4096
    """

    stage: ClassVar[str] = "quantized"
    needs_batches: ClassVar[bool] = True

    def __init__(self, dampening: float = 0.01, samples: int = 16384, block: int = 128):
        if dampening <= 0 or samples < 1 or block < 1:
            raise ConfigError(f"GPTQRounding: Expected dampening > 0, samples >= 1 and block >= 1. Received: "
                              f"dampening={dampening}, samples={samples}, block={block}")
        self.dampening, self.samples, self.block = dampening, samples, block

    def apply(self, quantizer: Any, batches: list[Any] | None) -> TechniqueReport:
        start = time.perf_counter()
        report = TechniqueReport(self.name)
        layers = [layer for layer in quantizer.layers if quantizer.quantizes(layer, QuantType.QUANT_WEIGHT)]
        seconds: dict[str, float] = {}
        error: dict[str, float] = {}
        nearest: dict[str, float] = {}
        for layer in layers:
            if not batches:
                report.skipped[layer.name] = "GPTQ rounds on the Hessian of calibration inputs; calibrate() got none"
            elif not isinstance(layer.module, ROUNDED_LAYERS):
                report.skipped[layer.name] = f"{type(layer.module).__name__} is not one of " \
                                             f"{[cls.__name__ for cls in ROUNDED_LAYERS]}"
            elif quantizer.states[layer.name].calls != 1:
                report.skipped[layer.name] = "it is called several times per forward (one rounding per input)"
        wanted = {layer.name for layer in layers} - set(report.skipped)

        def visit(layer: Any, x: torch.Tensor) -> None:
            if layer.name in wanted:
                begin = time.perf_counter()
                nearest[layer.name], error[layer.name] = self._round_layer(quantizer, layer, x)
                seconds[layer.name] = time.perf_counter() - begin

        if wanted:
            sequential_pass(quantizer, batches, visit)
        report.applied = [layer.name for layer in layers if layer.name in seconds]
        report.details = {"seconds": seconds, "error": error, "error_nearest": nearest}
        report.seconds = time.perf_counter() - start
        return report

    def hessian(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``X^T X / positions`` per group, float64, on at most ``samples`` positions of ``x`` (unfolded a few samples
        at a time, so a large feature map never unfolds whole)."""
        x = x.detach()
        first = input_rows(module, x[:1])
        per_sample = first.shape[1]
        total = per_sample * x.shape[0]
        chunk = max(1, (1 << 22) // max(first.numel(), 1))  # about 4 M unfolded values at a time
        keep = min(self.samples, total)
        generator = torch.Generator().manual_seed(0)
        chosen = torch.sort(torch.randperm(total, generator=generator)[:keep]).values
        hessian = torch.zeros(first.shape[0], first.shape[2], first.shape[2], dtype=torch.float64)
        for begin in range(0, x.shape[0], chunk):
            end = min(begin + chunk, x.shape[0])
            picked = chosen[(chosen >= begin * per_sample) & (chosen < end * per_sample)] - begin * per_sample
            if picked.numel():
                rows = input_rows(module, x[begin:end])[:, picked].double()
                hessian += rows.transpose(1, 2) @ rows
        return hessian / keep

    def _round_layer(self, quantizer: Any, layer: Any, x: torch.Tensor) -> tuple[float, float]:
        """Round ``layer`` on inputs ``x``; returns the output error (``trace(dW H dW^T)``) of nearest rounding and
        of the result."""
        module, params = layer.module, quantizer.params[layer.name]["weight"]
        weight = quantizer.backend.effective_weight(layer)
        groups = getattr(module, "groups", 1)
        hessian = self.hessian(module, x)  # (groups, columns, columns)
        rows = weight.reshape(groups, weight.shape[0] // groups, -1)  # (groups, out per group, columns)
        scale = torch.as_tensor(params.scale, dtype=torch.float64)
        zero = torch.as_tensor(params.zero_point, dtype=torch.float64)
        if params.per_channel:
            scale, zero = scale.reshape(groups, -1, 1), zero.reshape(groups, -1, 1)
        else:
            scale, zero = scale.reshape(()), zero.reshape(())

        def on_grid(values: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return (torch.clamp(torch.round(values / s) + z, params.qmin, params.qmax) - z) * s

        def quantize(block: torch.Tensor, offset: int, index: int) -> torch.Tensor:
            return on_grid(block[..., offset], scale[..., 0] if scale.dim() else scale,
                           zero[..., 0] if zero.dim() else zero)

        factor, dead = inverse_hessian_factor(hessian, self.dampening)
        work = rows.double().clone()
        work.masked_fill_(dead[:, None, :], 0.0)
        sweep_columns(work, factor, self.block, quantize)
        original = rows.double()
        nearest_rows = on_grid(original, scale, zero)

        def output_error(approximation: torch.Tensor) -> float:
            delta = original - approximation
            return float(((delta @ hessian) * delta).sum())

        nearest_error, learned_error = output_error(nearest_rows), output_error(work)
        if learned_error > nearest_error:
            work, learned_error = nearest_rows, nearest_error
        learned = work.reshape(weight.shape).to(weight.dtype)
        with torch.no_grad():
            bn = layer.wrapper._ref.bn
            stored = learned if bn is None else learned / channel_view(bn_factor(bn), weight.dim(), 0)
            quantizer.float_weights.setdefault(layer.name, module.weight.detach().clone())
            module.weight.copy_(stored)
        quantizer.set_fixed_params(layer.name, "weight", params)
        return nearest_error, learned_error


__all__ = ["GPTQRounding", "input_rows"]
