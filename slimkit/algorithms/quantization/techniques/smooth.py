"""``'smooth'``: SmoothQuant (Xiao et al., 2023), activation outliers migrated into the next Linear's weights.

A Linear's int8 input grid is one range for every input channel, so a few outlier channels (as in the outputs of
a transformer's LayerNorm) leave the others a handful of levels. Per input channel ``j``, over the calibration
batches,

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

(``max|W_j|`` over column ``j`` of every Linear reading the tensor), the tensor is divided by ``s`` and the
weight columns multiplied by it: ``(X / s) (W s)^T = X W^T``. The division is folded into the producer of the
tensor, so the float model computes the same function with no new op:

- a ``LayerNorm`` (its weight and bias),
- a ``Linear`` (its output rows: weight rows and bias),

and one ``s`` serves every Linear reading the tensor (q / k / v from one LayerNorm). ``alpha`` (default 0.5)
moves difficulty from the activations (1: all to the weights) to the weights (0: nothing moves). A Linear whose
input comes from anything else (a GELU, a residual sum, an attention product), or whose producer also feeds an op
that is not a smoothed Linear (a post-LN transformer's residual add), is skipped with the reason in the report:
scaling the producer would change that other consumer. Needs ``dummy_input`` (the graph tells the producers).

Example:

>>> import torch
>>> from slimkit.algorithms.quantization import PostTrainingQuantizer
>>> from slimkit.algorithms.quantization.techniques.smooth import Smooth
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 4)).eval()
>>> x = torch.randn(16, 8)
>>> ptq = PostTrainingQuantizer(model, [{'quant_types': ['input', 'weight', 'output'], 'op_types': ['Linear']}],
...                             dummy_input=x[:1], techniques=[Smooth(alpha=0.5)], progress=False)
>>> ptq.calibrate([x])
>>> report = ptq.technique_reports[0]
>>> report.applied, report.details['groups']
(['1'], {'0': ['1']})
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.algorithms.quantization.techniques.registry import Technique, TechniqueReport, register_technique
from slimkit.compression.quant import QuantType
from slimkit.errors import ConfigError

# ops that hand a tensor on with its last (channel) dimension unchanged, channel for channel
_PASS_THROUGH = {"clone", "contiguous", "dropout", "alias", "detach", "view", "reshape", "_unsafe_view", "unsqueeze",
                 "flatten", "to", "_to_copy"}
_PRODUCERS = {"layer_norm": nn.LayerNorm, "linear": nn.Linear}


def _op(node: torch.fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0] if node.op == "call_function" else node.op


def _channels(node: Any) -> int | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return int(value.shape[-1]) if isinstance(value, torch.Tensor) and value.dim() else None


def _passes_through(node: torch.fx.Node) -> bool:
    """Whether ``node`` only moves its first input, channels (last dimension) untouched."""
    if node.op != "call_function" or _op(node) not in _PASS_THROUGH or not node.args:
        return False
    source = node.args[0]
    return isinstance(source, torch.fx.Node) and _channels(source) is not None and _channels(source) == _channels(node)


def _producer(node: torch.fx.Node) -> torch.fx.Node:
    """The node that computed ``node``'s values, through ops that only move them."""
    while _passes_through(node):
        node = node.args[0]
    return node


def _consumers(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The ops reading ``node``'s values, through ops that only move them."""
    found = []
    for user in node.users:
        found.extend(_consumers(user) if _passes_through(user) and user.args[0] is node else [user])
    return found


class _Group:
    """One producer and the Linear layers reading its output."""

    def __init__(self, producer: str, module: nn.Module):
        self.producer, self.module = producer, module
        self.linears: list[str] = []


def _plan(quantizer: Any, linears: dict[str, nn.Linear]) -> tuple[list[_Group], dict[str, str]]:
    """The smoothable groups among ``linears`` and the reason each other one is skipped."""
    captured = quantizer.graph_plan.captured
    modules = dict(quantizer.model.named_modules())
    calls = quantizer.graph_plan.calls
    groups: dict[str, _Group] = {}
    skipped: dict[str, str] = {}
    for node in captured.call_nodes():
        name = captured.module_path(node)
        if name not in linears or _op(node) != "linear" or name in skipped or name in groups:
            continue
        if calls.get(name, 1) > 1:
            skipped[name] = f"it is called {calls[name]} times per forward (one weight, several inputs)"
            continue
        source = _producer(node.args[0])
        producer = captured.module_path(source) if source.op == "call_function" else ""
        kind = _op(source) if source.op == "call_function" else "the model input"
        module = modules.get(producer) if producer else None
        expected = _PRODUCERS.get(kind)
        if expected is None or not isinstance(module, expected) or calls.get(producer, 1) > 1:
            where = f"module {producer!r}" if producer else "the model's own forward"
            skipped[name] = (f"its input comes from {kind!r} in {where}, which cannot absorb a per-channel scale "
                             "(expected a LayerNorm or a Linear called once)")
            continue
        if isinstance(module, nn.LayerNorm) and (module.weight is None or module.bias is None):
            skipped[name] = f"its producer LayerNorm {producer!r} has no affine weight and bias to absorb the scale"
            continue
        readers = _consumers(source)
        others = [user for user in readers if _op(user) != "linear" or captured.module_path(user) not in linears
                  or _producer(user.args[0]) is not source]
        if others:
            other = others[0]
            where = captured.module_path(other)
            skipped[name] = (f"its producer {producer!r} ({type(module).__name__}) also feeds {_op(other)!r} in "
                             + (f"module {where!r}" if where else "the model's own forward")
                             + " (e.g. a residual add), which a scale folded into the producer would change")
            continue
        group = groups[producer] = _Group(producer, module)
        group.linears = [captured.module_path(user) for user in readers]
    return list(groups.values()), skipped


def _maxima(quantizer: Any, inputs: dict[str, nn.Module], outputs: dict[str, nn.Module],
            batches: Iterable[Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per channel (last dimension), ``max|x|`` of each module's input in ``inputs`` and of each module's output in
    ``outputs`` over ``batches`` (the float model, keyed like the dicts)."""
    found: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = ({}, {})

    def record(table: dict[str, torch.Tensor], key: str, x: torch.Tensor) -> None:
        peak = x.detach().abs().reshape(-1, x.shape[-1]).amax(0)
        table[key] = peak if key not in table else torch.maximum(table[key], peak)

    handles = [module.register_forward_pre_hook(lambda m, args, key=key: record(found[0], key, args[0]))
               for key, module in inputs.items()]
    handles += [module.register_forward_hook(lambda m, args, out, key=key: record(found[1], key, out))
                for key, module in outputs.items()]
    try:
        with quantizer.backend.inference(quantizer.model):
            for batch in batches:
                quantizer.backend.run_batch(quantizer.model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _imbalance(peaks: torch.Tensor) -> float:
    """How far the largest channel range stands above the typical one (max / median)."""
    median = float(peaks.median())
    return float(peaks.max()) / median if median > 0 else float("inf")


def smoothing_scales(input_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = input_max_j ** alpha / weight_max_j ** (1 - alpha)``; 1 where either maximum is 0 (a dead channel
    has nothing to migrate).

    Example:

    >>> import torch
    >>> smoothing_scales(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0]), 0.5).tolist()
    [4.0, 0.5, 1.0]
    """
    live = (input_max > 0) & (weight_max > 0)
    scales = input_max.clamp(min=1e-30) ** alpha / weight_max.clamp(min=1e-30) ** (1 - alpha)
    return torch.where(live, scales, torch.ones_like(scales))


@torch.no_grad()
def _fold(group: _Group, linears: dict[str, nn.Linear], scales: torch.Tensor) -> None:
    module = group.module
    if isinstance(module, nn.LayerNorm):
        module.weight.div_(scales)
        module.bias.div_(scales)
    else:
        module.weight.div_(scales[:, None])
        if module.bias is not None:
            module.bias.div_(scales)
    for name in group.linears:
        linears[name].weight.mul_(scales)


@register_technique("smooth")
class Smooth(Technique):
    """SmoothQuant (see the module docstring): per-channel scales folded from each Linear's input into its weights.

    Where no producer can absorb the scale, and the Linear quantizes its own input or output (``op_types``
    naming Linear, not whole-graph ``'default'``), ``explicit=True`` puts a per-channel multiply around the int8
    kernel instead: ``x * (1 / s)`` before the input is quantized, or ``y * t`` after the output is quantized with
    the weight rows and bias divided by ``t = max|Y_j| / max_k max|Y_k|`` (every output channel then spans the
    whole int8 grid: per-channel output quantization, which an int8 kernel cannot express alone). Both are float
    MULs beside the int8 FULLY_CONNECTED in the converted file, where the ops around a Linear are float anyway; the
    float model computes the same function. They are placed only where one channel's range exceeds ``min_ratio``
    times the median channel's (a post-LN transformer's residual contribution: MiniLM's FFN output reaches 195
    in one channel, the others about 1).

    Args:
        alpha: migration strength in [0, 1]: ``s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)`` (default 0.5,
            the paper's choice for most models). Pass an instance to set it:
            ``PostTrainingQuantizer(..., techniques=[Smooth(alpha=0.75)])``; the name ``'smooth'`` uses 0.5.
        explicit: multiply explicitly where folding is impossible (default True); False only folds.
        min_ratio: the channel imbalance (largest range / median range) from which an explicit multiply is placed.

    Raises:
        ConfigError: ``alpha`` outside [0, 1], or ``min_ratio`` below 1.

    Example:

    >>> from slimkit.algorithms.quantization.techniques.smooth import Smooth
    >>> Smooth(alpha=0.75).alpha
    0.75
    """

    stage = "float"
    needs_batches = True

    def __init__(self, alpha: float = 0.5, *, explicit: bool = True, min_ratio: float = 4.0):
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"Smooth: Expected alpha in [0, 1]. Received: alpha={alpha!r}")
        if not isinstance(min_ratio, (int, float)) or isinstance(min_ratio, bool) or not min_ratio >= 1.0:
            raise ConfigError(f"Smooth: Expected min_ratio >= 1. Received: min_ratio={min_ratio!r}")
        self.alpha, self.explicit, self.min_ratio = float(alpha), bool(explicit), float(min_ratio)

    def apply(self, quantizer: Any, batches: list[Any] | None) -> TechniqueReport:
        start = time.perf_counter()
        report = TechniqueReport(self.name, details={"alpha": self.alpha, "groups": {}, "scales": {},
                                                     "explicit_inputs": [], "explicit_outputs": []})
        selected = [layer for layer in quantizer.layers if isinstance(layer.module, nn.Linear)]
        for layer in quantizer.layers:
            if not isinstance(layer.module, nn.Linear):
                report.skipped[layer.name] = f"it is a {layer.type}, not a Linear"
        reason = None
        if not batches:
            reason = "smoothing needs calibration batches (max |X_j| per input channel); none were given"
        elif quantizer.adapter.name != "torch" or quantizer.graph_plan is None:
            reason = "smoothing needs the PyTorch graph to find each input's producer: pass dummy_input"
        if reason is not None:
            report.skipped.update({layer.name: reason for layer in selected})
            return report
        was_wrapped = quantizer.wrapped
        quantizer.unwrap_model()  # the float model: nothing observed, hooks on the Linear modules themselves
        try:
            self._smooth(quantizer, selected, batches, report)
        finally:
            if was_wrapped:
                quantizer.compress()
        report.seconds = time.perf_counter() - start
        return report

    def _smooth(self, quantizer: Any, selected: list[Any], batches: list[Any], report: TechniqueReport) -> None:
        linears = {layer.name: layer.module for layer in selected}
        groups, skipped = _plan(quantizer, linears)
        report.skipped.update(skipped)
        explicit = self.explicit and not quantizer.whole_graph
        calls = quantizer.graph_plan.calls
        fusions = quantizer.graph_plan.fusions
        inputs = [layer for layer in selected if layer.name in skipped and calls.get(layer.name, 1) == 1
                  and quantizer.quantizes(layer, QuantType.QUANT_INPUT)] if explicit else []
        outputs = [layer for layer in selected if calls.get(layer.name, 1) == 1 and layer.name not in fusions
                   and quantizer.quantizes(layer, QuantType.QUANT_OUTPUT)] if explicit else []
        watched = {f"from:{group.producer}": linears[group.linears[0]] for group in groups}
        watched.update({layer.name: layer.module for layer in inputs})
        input_max, output_max = _maxima(quantizer, watched, {layer.name: layer.module for layer in outputs}, batches)
        for group in groups:
            weight_max = torch.stack([linears[name].weight.detach().abs().amax(0) for name in group.linears])
            scales = smoothing_scales(input_max[f"from:{group.producer}"], weight_max.amax(0), self.alpha)
            _fold(group, linears, scales)
            report.applied.extend(group.linears)
            report.details["groups"][group.producer] = list(group.linears)
            report.details["scales"][group.producer] = scales
        for group in groups:  # a Linear producer's output is now Y / s
            if group.producer in output_max:
                output_max[group.producer] = output_max[group.producer] / report.details["scales"][group.producer]
        channel_scales = quantizer.channel_scales
        for layer in inputs:
            peaks = input_max[layer.name]
            if _imbalance(peaks) >= self.min_ratio:
                scales = smoothing_scales(peaks, layer.module.weight.detach().abs().amax(0), self.alpha)
                channel_scales.setdefault(layer.name, {})["input"] = scales.reciprocal()
                report.details["explicit_inputs"].append(layer.name)
                report.skipped.pop(layer.name)
        for layer in outputs:
            peaks = output_max[layer.name]
            if _imbalance(peaks) >= self.min_ratio:
                channel_scales.setdefault(layer.name, {})["output"] = (peaks / peaks.max()).clamp(min=2.0 ** -8)
                report.details["explicit_outputs"].append(layer.name)
        touched = set(report.details["explicit_inputs"]) | set(report.details["explicit_outputs"])
        report.applied.extend(name for name in linears if name in touched and name not in report.applied)
