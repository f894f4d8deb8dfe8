"""``'equalize'``: cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization", section 4.1).

For consecutive layers ``first`` -> [BatchNorm] -> [activation] -> ``second`` (found on the captured graph by
:func:`~slimkit.algorithms.quantization.techniques.chains.find_pairs`), output channel ``i`` of ``first`` is
divided by ``s_i`` and input channel ``i`` of ``second`` multiplied by it, with

    s_i = sqrt(r1_i / r2_i),   so that   r1_i / s_i == r2_i * s_i == sqrt(r1_i * r2_i),

where ``r1_i`` is the largest ``|w|`` of output channel ``i`` of ``first``'s weight as the int8 kernel sees it
(BatchNorm folded in) and ``r2_i`` the largest ``|w|`` of input channel ``i`` of ``second``'s (its own BatchNorm
folded in). A BatchNorm between the two is scaled instead of ``first`` (``gamma / s``, ``beta / s``: its output
is divided by ``s`` in training and in eval), which is the same as scaling the folded kernel. Chains such as
expand -> depthwise -> project are iterated until the factors settle (every factor within ``tolerance`` of 1).

The float model computes the same function afterwards, because ReLU and LeakyReLU are positive-homogeneous
(``f(x / s) == f(x) / s``). ReLU6 is not: ``relu6(t y) == t relu6(y)`` only while neither side reaches the clip at
6. Three policies, by ``relu6=``:

- ``'skip'`` (default): a pair through ReLU6 is skipped and reported. Exact.
- ``'bound'``: the pair is equalized only as far as each channel's largest value before the ReLU6, ``hi_c``, stays
  on its side of the clip: a channel with ``hi_c <= 0`` (never positive) is scaled freely, one with
  ``0 < hi_c <= 6`` grows by at most ``6 / hi_c``, one with ``hi_c > 6`` (it reaches the clip) is not scaled.
  ``hi_c`` is the largest value seen on the calibration batches (then the float output is unchanged on them), or,
  without batches, ``beta_c + sigmas * |gamma_c|`` of the BatchNorm before the ReLU6 (pairs without one are
  skipped). Real activations have heavier tails than the BatchNorm's Gaussian: on EfficientNet-Lite0 the
  statistics bound (6 deviations) still changed 16 % of the float model's top-1 predictions (32 images), so give
  batches.
- ``'relu'``: the ReLU6 module is replaced by a ReLU first (what the paper and AIMET do). The float output then
  changes wherever a value exceeded 6 (on EfficientNet-Lite0, trained with ReLU6, that alone leaves 27 % top-1
  agreement with the original); the replaced modules are reported and the fused activation becomes ``'relu'``.

Any other activation between the two layers (GELU, sigmoid, hardswish, SiLU ...) skips the pair, with the layer
and the reason in the report.

Example:

>>> import torch
>>> from slimkit.algorithms.quantization import PostTrainingQuantizer
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
>>> x = torch.randn(16, 4)
>>> before = model(x)
>>> ptq = PostTrainingQuantizer(model, [{'quant_types': ['weight'], 'op_types': ['Linear']}], dummy_input=x[:1],
...                             techniques=['equalize'], progress=False)
>>> ptq.calibrate([x])
>>> report = ptq.technique_reports[0]
>>> report.applied, report.details['pairs']
(['0', '2'], [('0', '2')])
>>> ptq.unwrap_model() is model and bool(torch.allclose(model(x), before, rtol=1e-5, atol=1e-6))
True
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from torch import nn

from slimkit.algorithms.quantization.techniques.chains import CLIPPED, Pair, find_pairs, float_modules
from slimkit.algorithms.quantization.techniques.registry import Technique, TechniqueReport, register_technique
from slimkit.compression.channels import channel_view
from slimkit.errors import ConfigError
from slimkit.frameworks.torch.adapter import set_submodule
from slimkit.frameworks.torch.quant_backend import bn_factor

RELU6_POLICIES = ("skip", "bound", "relu")


def _out_ranges(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().flatten(1).amax(1)


class _SecondView:
    """How input channel ``i`` of the second layer maps onto its weight: a plain conv / linear (``w[:, i]``) or a
    depthwise conv (``groups == in_channels``: output channels ``i*m .. i*m+m-1``, one input each)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1

    def grouped(self, weight: torch.Tensor, channels: int) -> torch.Tensor:
        """``weight`` as ``(channels, ...)`` with input channel ``i`` in row ``i``."""
        if self.depthwise:
            return weight.reshape(channels, -1)
        return weight.transpose(0, 1).reshape(channels, -1)

    def ranges(self, weight: torch.Tensor, channels: int) -> torch.Tensor:
        return self.grouped(weight.detach().abs(), channels).amax(1)

    def scale(self, scales: torch.Tensor) -> None:
        weight = self.module.weight
        if self.depthwise:
            multiplier = weight.shape[0] // scales.numel()
            view = scales.repeat_interleave(multiplier)
            weight.mul_(channel_view(view, weight.dim(), 0))
        else:
            weight.mul_(channel_view(scales, weight.dim(), 1))


@register_technique("equalize")
class Equalize(Technique):
    """Cross-layer equalization of consecutive conv / linear pairs (output unchanged in float).

    Args:
        relu6: ``'skip'`` (pairs through ReLU6 are skipped: exact), ``'bound'`` (equalized as far as each channel's
            values, bounded on the calibration batches or by BatchNorm statistics, stay on their side of the clip) or
            ``'relu'`` (ReLU6 replaced by ReLU: the float output changes where a value exceeded 6).
        iterations: at most this many passes over the pairs (chains share layers).
        tolerance: stop when every factor of a pass is within this of 1.
        sigmas: ``relu6='bound'`` without batches: how many BatchNorm deviations above ``beta`` a value may reach.

    Example:

    >>> from slimkit.algorithms.quantization.techniques.equalize import Equalize
    >>> Equalize(relu6='bound').relu6
    'bound'
    """

    stage: ClassVar[str] = "float"
    needs_graph: ClassVar[bool] = True

    def __init__(self, relu6: str = "skip", iterations: int = 20, tolerance: float = 1e-4, sigmas: float = 6.0):
        if relu6 not in RELU6_POLICIES:
            raise ConfigError(f"Equalize: Expected relu6 to be one of {list(RELU6_POLICIES)}. "
                              f"Received: relu6={relu6!r}")
        self.relu6, self.iterations, self.tolerance, self.sigmas = relu6, iterations, tolerance, sigmas

    def apply(self, quantizer: Any, batches: list[Any] | None) -> TechniqueReport:
        start = time.perf_counter()
        report = TechniqueReport(self.name)
        modules = float_modules(quantizer)
        pairs, report.skipped = find_pairs(modules, quantizer.graph_plan.captured)
        self._tops: dict[str, torch.Tensor] = {}
        if self.relu6 == "bound" and batches:
            self._observe_tops(quantizer, pairs, modules, batches)
        usable = []
        for pair in pairs:
            reason = self._unusable(pair, modules, quantizer)
            if reason is None:
                usable.append(pair)
            else:
                report.skipped[pair.first] = reason
        replaced = [self._replace_relu6(pair, modules, quantizer) for pair in usable
                    if pair.activation_kind in CLIPPED and self.relu6 == "relu"]
        passes = 0
        with torch.no_grad():
            for passes in range(1, self.iterations + 1):  # noqa: B007 (reported)
                change = max((self._equalize(pair, modules) for pair in usable), default=0.0)
                if change <= self.tolerance:
                    break
        report.applied = sorted({name for pair in usable for name in (pair.first, pair.second)})
        report.details = {"pairs": [(pair.first, pair.second) for pair in usable], "iterations": passes,
                          "relu6_replaced": replaced}
        report.seconds = time.perf_counter() - start
        return report

    def _unusable(self, pair: Pair, modules: dict[str, nn.Module], quantizer: Any) -> str | None:
        first, second = modules[pair.first], modules[pair.second]
        channels = first.weight.shape[0]
        inputs = second.weight.shape[1] * (second.groups if isinstance(second, nn.modules.conv._ConvNd) else 1)
        if inputs != channels:
            return f"its {channels} output channels do not map one to one onto {pair.second!r}'s {inputs} inputs"
        if isinstance(second, nn.modules.conv._ConvNd) and 1 < second.groups != second.in_channels:
            return f"{pair.second!r} is a grouped conv (groups={second.groups}); only plain and depthwise are equalized"
        bn = modules.get(pair.bn) if pair.bn else None
        if bn is not None and (bn.weight is None or bn.bias is None):
            return f"BatchNorm {pair.bn!r} between it and {pair.second!r} has no affine scale / shift to rescale"
        if pair.activation_kind in CLIPPED:
            if self.relu6 == "skip":
                return (f"its output reaches {pair.second!r} through ReLU6 (module {pair.activation!r}), whose clip "
                        "at 6 does not scale (not positive-homogeneous); Equalize(relu6='bound') equalizes below it")
            activation = modules.get(pair.activation)
            if self.relu6 == "bound":
                if not _is_relu6(activation):
                    return (f"its output reaches {pair.second!r} through {pair.activation_kind!r} (module "
                            f"{pair.activation!r}), not a ReLU6 module whose clip its values can be kept clear of")
                if bn is None and pair.activation not in self._tops:
                    return (f"its output reaches {pair.second!r} through ReLU6 (module {pair.activation!r}) with no "
                            "BatchNorm before it to bound the values below the clip")
                return None
            calls = quantizer.graph_plan.calls.get(pair.activation, 1)
            if not _is_relu6(activation) or calls != 1:
                return (f"its output reaches {pair.second!r} through {pair.activation_kind!r} (module "
                        f"{pair.activation!r}), not a ReLU6 module called once that could be replaced by ReLU")
        return None

    def _replace_relu6(self, pair: Pair, modules: dict[str, nn.Module], quantizer: Any) -> str:
        old, relu = modules[pair.activation], nn.ReLU()
        for hook in old._forward_hooks.values():  # a fused kernel's output quantization sits there
            relu.register_forward_hook(hook)
        set_submodule(quantizer.model, pair.activation, relu)
        modules[pair.activation] = relu
        for fusion in quantizer.graph_plan.fusions.values():
            if fusion.tail == pair.activation:
                fusion.activation = "relu"
        return pair.activation

    def _equalize(self, pair: Pair, modules: dict[str, nn.Module]) -> float:
        """One equalization of ``pair``; returns the largest ``|s_i - 1|``."""
        first, second = modules[pair.first], modules[pair.second]
        bn = modules[pair.bn] if pair.bn else None
        weight = first.weight if bn is None else first.weight * channel_view(bn_factor(bn), first.weight.dim(), 0)
        r1 = _out_ranges(weight).double()
        view = _SecondView(second)
        second_weight = second.weight
        if pair.second_bn:
            second_weight = second_weight * channel_view(bn_factor(modules[pair.second_bn]), second_weight.dim(), 0)
        r2 = view.ranges(second_weight, r1.numel()).double()
        usable = (r1 > 0) & (r2 > 0) & torch.isfinite(r1) & torch.isfinite(r2)
        scales = torch.where(usable, torch.sqrt(r1 / torch.where(usable, r2, 1.0)), 1.0)
        if self.relu6 == "bound" and pair.activation_kind in CLIPPED and _is_relu6(modules[pair.activation]):
            top = self._tops.get(pair.activation)
            if top is None:
                top = (bn.bias + self.sigmas * bn.weight.abs()).double()
            scales = _below_clip(scales, top)
            if pair.activation in self._tops:
                self._tops[pair.activation] = top / scales  # the first layer's output is multiplied by 1 / s
        inverse = (1.0 / scales).to(first.weight.dtype)
        if bn is None:
            first.weight.mul_(channel_view(inverse, first.weight.dim(), 0))
            if first.bias is not None:
                first.bias.mul_(inverse)
        else:
            bn.weight.mul_(inverse)
            bn.bias.mul_(inverse)
        view.scale(scales.to(second.weight.dtype))
        return float((scales - 1).abs().max()) if scales.numel() else 0.0


    def _observe_tops(self, quantizer: Any, pairs: list[Pair], modules: dict[str, nn.Module],
                      batches: list[Any]) -> None:
        """The largest value per channel entering each pair's ReLU6 on the calibration batches (float model)."""
        handles = []
        for pair in pairs:
            if pair.activation_kind not in CLIPPED:
                continue
            dim = -1 if isinstance(modules[pair.first], nn.Linear) else 1

            def hook(module: nn.Module, args: tuple, key: str = pair.activation, dim: int = dim) -> None:
                x = args[0].detach()
                top = x.movedim(dim, 0).reshape(x.shape[dim], -1).amax(1).double()
                self._tops[key] = top if key not in self._tops else torch.maximum(self._tops[key], top)

            handles.append(modules[pair.activation].register_forward_pre_hook(hook))
        observing, quantizer.observing = quantizer.observing, False  # not calibration: no range is recorded
        try:
            with quantizer.backend.inference(quantizer.model):
                for batch in batches:
                    quantizer.backend.run_batch(quantizer.model, batch)
        finally:
            quantizer.observing = observing
            for handle in handles:
                handle.remove()


def _below_clip(scales: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``scales`` limited so that every channel's largest value ``top`` keeps its side of ReLU6's clip (the first
    layer's output is multiplied by ``t = 1 / s``)."""
    growth = torch.where(top > 0, 6.0 / top.clamp_min(1e-30), float("inf"))  # the largest t allowed
    t = torch.minimum(1.0 / scales, growth)
    return torch.where(top > 6.0, 1.0, 1.0 / t)


def _is_relu6(module: nn.Module | None) -> bool:
    return isinstance(module, nn.ReLU6) or (type(module) is nn.Hardtanh and (module.min_val, module.max_val) == (0, 6))


__all__ = ["Equalize"]
