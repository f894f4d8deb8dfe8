"""``'adaround'``: learned rounding of each weight, up or down (Nagel et al., 2020, "Up or Down? Adaptive Rounding").

Round-to-nearest is not the best rounding for a layer's *output*. Per layer, on its inputs from the calibration
batches (as the quantized model delivers them, earlier layers already rounded:
:func:`~slimkit.algorithms.quantization.techniques.sequential.sequential_pass`), AdaRound learns for each weight
whether to round down or up:

    W~ = s * clip(floor(W / s) + h(V), qmin, qmax),   h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)

(the rectified sigmoid, ``zeta = 1.1``, ``gamma = -0.1``), minimising ``||conv(x, W) - conv(x, W~)||^2`` plus
``reg_weight * sum(1 - |2 h(V) - 1|^beta)``, whose ``beta`` is annealed from 20 to 2 after a warm-up without it,
which drives every ``h(V)`` to 0 or 1. ``V`` starts where ``h(V)`` equals the fractional part of ``W / s`` (the
float weight). The final weight takes ``h = 1`` where ``V >= 0``: each weight is exactly ``floor(w / s) * s`` or
``ceil(w / s) * s`` for its channel's scale ``s`` (BatchNorm folded in where the quantizer folds it); the layer's
float weight is set to that grid point and its weight parameters pinned (``set_fixed_params``), so nothing
recomputes the scale. Where the learned rounding ends with a larger output MSE on the calibration data than nearest
rounding (too few iterations), the layer keeps nearest rounding. Run ``'bias_correction'`` after it to remove the
mean shift that remains.

Without calibration batches (``calibrate(None)``) every layer is skipped, named with the reason. Time per layer is
in ``report.details['seconds']``, the layer-output MSE of nearest rounding and of AdaRound in
``details['mse_nearest']`` / ``details['mse']``.

Example:

>>> import torch
>>> from slimkit.algorithms.quantization import PostTrainingQuantizer
>>> from slimkit.algorithms.quantization.techniques import AdaRound
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4))
>>> ptq = PostTrainingQuantizer(model, [{'quant_types': ['weight'], 'quant_bits': 4, 'op_types': ['Linear']}],
...                             techniques=[AdaRound(iterations=60, lr=3e-2)], progress=False)
>>> ptq.calibrate([torch.randn(32, 8) for _ in range(2)])
>>> details = ptq.technique_reports[0].details
>>> details['mse']['0'] < details['mse_nearest']['0']
True
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from slimkit.algorithms.quantization.techniques.registry import Technique, TechniqueReport, register_technique
from slimkit.algorithms.quantization.techniques.sequential import sequential_pass
from slimkit.compression.channels import channel_view
from slimkit.compression.quant import QuantType
from slimkit.errors import ConfigError
from slimkit.frameworks.torch.quant_backend import bn_factor

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V)``: the sigmoid stretched to ``(gamma, zeta)`` and clipped to ``[0, 1]``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(fraction: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) == fraction`` (inside ``(0, 1)``)."""
    p = ((fraction - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


@register_technique("adaround")
class AdaRound(Technique):
    """Adaptive rounding of each quantized layer's weights on the calibration batches.

    Args:
        iterations: optimisation steps per layer (the paper: 10,000 at ``lr=1e-3``; fewer steps at a larger rate
            already beat nearest rounding).
        batch_size: calibration samples per step (rows of a Linear input, images of a conv input).
        lr: Adam's learning rate on ``V``.
        reg_weight: weight of the rounding regulariser.
        warmup: fraction of the steps before the regulariser starts.
        beta: the regulariser's exponent, annealed from the first to the second value.
        crop: a conv input larger than this (each spatial side) is seen by each step through a random
            ``crop x crop`` window (target and rounded output on the same window; wider where the kernel reaches
            further), which keeps a step's cost independent of the image size; None uses whole inputs.

    Example:

    >>> from slimkit.algorithms.quantization.techniques import AdaRound
    >>> AdaRound(iterations=100).iterations
    100
    """

    stage: ClassVar[str] = "quantized"
    needs_batches: ClassVar[bool] = True

    def __init__(self, iterations: int = 1000, batch_size: int = 32, lr: float = 1e-2, reg_weight: float = 0.01,
                 warmup: float = 0.2, beta: tuple[float, float] = (20.0, 2.0), crop: int | None = 32):
        if iterations < 1 or batch_size < 1 or not 0 <= warmup < 1:
            raise ConfigError(f"AdaRound: Expected iterations >= 1, batch_size >= 1 and 0 <= warmup < 1. Received: "
                              f"iterations={iterations}, batch_size={batch_size}, warmup={warmup}")
        self.iterations, self.batch_size, self.lr = iterations, batch_size, lr
        self.reg_weight, self.warmup, self.beta, self.crop = reg_weight, warmup, beta, crop

    def apply(self, quantizer: Any, batches: list[Any] | None) -> TechniqueReport:
        start = time.perf_counter()
        report = TechniqueReport(self.name)
        layers = [layer for layer in quantizer.layers if quantizer.quantizes(layer, QuantType.QUANT_WEIGHT)]
        seconds: dict[str, float] = {}
        mse: dict[str, float] = {}
        nearest: dict[str, float] = {}
        if not batches:
            report.skipped = {layer.name: "AdaRound learns the rounding on calibration batches, and calibrate() got "
                              "none" for layer in layers}
        else:
            for layer in layers:
                if quantizer.states[layer.name].calls != 1:
                    report.skipped[layer.name] = "it is called several times per forward (one rounding per input)"
            wanted = {layer.name for layer in layers} - set(report.skipped)

            def visit(layer: Any, x: torch.Tensor) -> None:
                if layer.name not in wanted:
                    return
                begin = time.perf_counter()
                with torch.enable_grad():
                    nearest[layer.name], mse[layer.name] = self._round_layer(quantizer, layer, x)
                seconds[layer.name] = time.perf_counter() - begin

            sequential_pass(quantizer, batches, visit)
        report.applied = [layer.name for layer in layers if layer.name in seconds]
        report.details = {"seconds": seconds, "mse": mse, "mse_nearest": nearest}
        report.seconds = time.perf_counter() - start
        return report

    def _round_layer(self, quantizer: Any, layer: Any, x: torch.Tensor) -> tuple[float, float]:
        """Learn the rounding of ``layer`` on inputs ``x``; returns the output MSE of nearest and learned rounding."""
        wrapper, params = layer.wrapper, quantizer.params[layer.name]["weight"]
        weight = quantizer.backend.effective_weight(layer)
        scale = torch.as_tensor(params.scale, dtype=weight.dtype, device=weight.device)
        scale = channel_view(scale, weight.dim(), params.axis) if params.per_channel else scale.reshape(())
        floor = torch.floor(weight / scale)
        qmin, qmax = params.qmin, params.qmax
        v = initial_v(weight / scale - floor).requires_grad_(True)
        x = x.detach()

        def run(w: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
            return wrapper.call_module({"weight": w, "bias": None}, (inputs,), {})

        module = layer.module
        # a window never narrower than the kernel's (dilated) reach: a 256-tap STFT conv sees 256 samples at least
        spans = [(k - 1) * d + 1 for k, d in zip(getattr(module, "kernel_size", ()), getattr(module, "dilation", ()))]

        def sample(step_generator: torch.Generator) -> torch.Tensor:
            rows = torch.randint(0, x.shape[0], (min(self.batch_size, x.shape[0]),), generator=step_generator)
            batch = x[rows]
            if self.crop is None or isinstance(layer.module, torch.nn.Linear) or batch.dim() < 3:
                return batch
            for dim, span in zip(range(2, batch.dim()), spans):
                window = max(self.crop, span)
                if batch.shape[dim] > window:
                    start = int(torch.randint(0, batch.shape[dim] - window + 1, (1,), generator=step_generator))
                    batch = batch.narrow(dim, start, window)
            return batch

        def rounded(h: torch.Tensor) -> torch.Tensor:
            return torch.clamp(floor + h, qmin, qmax) * scale

        optimizer = torch.optim.Adam([v], lr=self.lr)
        generator = torch.Generator().manual_seed(0)
        warm = int(self.warmup * self.iterations)
        for step in range(self.iterations):
            batch = sample(generator)
            with torch.no_grad():
                target = run(weight, batch)
            h = rectified_sigmoid(v)
            loss = (run(rounded(h), batch) - target).pow(2).mean()
            if step >= warm:
                progress = (step - warm) / max(self.iterations - warm, 1)
                beta = self.beta[1] + (self.beta[0] - self.beta[1]) * (1 - progress)
                loss = loss + self.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            target = run(weight, x)
            learned = rounded((v >= 0).to(weight.dtype))
            nearest = torch.clamp(torch.round(weight / scale), qmin, qmax) * scale
            nearest_mse = float((run(nearest, x) - target).pow(2).mean())
            learned_mse = float((run(learned, x) - target).pow(2).mean())
            if learned_mse > nearest_mse:  # too few steps to learn better: keep nearest rounding (also on the grid)
                learned, learned_mse = nearest, nearest_mse
            bn = wrapper._ref.bn
            stored = learned if bn is None else learned / channel_view(bn_factor(bn), weight.dim(), 0)
            quantizer.float_weights.setdefault(layer.name, layer.module.weight.detach().clone())
            layer.module.weight.copy_(stored)
        quantizer.set_fixed_params(layer.name, "weight", params)
        return nearest_mse, learned_mse


__all__ = ["AdaRound", "initial_v", "rectified_sigmoid"]
