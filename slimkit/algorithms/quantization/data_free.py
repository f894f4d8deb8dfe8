"""Activation ranges without data, from the BatchNorm folded into each layer (Nagel et al., 2019, section 4.2).

A BatchNorm's output in channel ``c`` has mean ``beta_c`` and standard deviation ``|gamma_c|`` over the data it
was trained on. ``PostTrainingQuantizer.calibrate(None)`` (or ``[]``) takes the output range of a conv + BN
(+ ReLU / ReLU6) kernel as ``[min_c(beta_c - n |gamma_c|), max_c(beta_c + n |gamma_c|)]`` with ``n = bn_sigmas``
(6 by default: a Gaussian channel leaves it once in 10^9 values), clipped to what the fused activation lets
through. A quantized tensor with no BatchNorm to read (an input, a layer without BN, a tensor of whole-graph mode)
cannot be calibrated this way: :func:`data_free_gaps` names them, and ``calibrate`` raises before anything changes.

Example:

>>> import torch
>>> from slimkit.algorithms.quantization import PostTrainingQuantizer
>>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU6()).eval()
>>> with torch.no_grad():
...     _ = model[1].weight.copy_(torch.tensor([0.5, 2.0])); _ = model[1].bias.copy_(torch.tensor([1.0, -1.0]))
>>> ptq = PostTrainingQuantizer(model, [{'quant_types': ['weight', 'output'], 'op_types': ['Conv2d']}],
...                             dummy_input=torch.randn(1, 1, 5, 5), progress=False)
>>> ptq.calibrate(None)
>>> params = ptq.params['0']['output']
>>> round(float(params.scale[0] * (params.qmax - params.zero_point[0])), 4)  # beta + 6 |gamma| = 11, clipped at 6
6.0
"""

from __future__ import annotations

from typing import Any

import torch

from slimkit.compression.quant import QuantType

_CLIPS = {None: (-float("inf"), float("inf")), "relu": (0.0, float("inf")), "relu6": (0.0, 6.0)}


def _fusion(quantizer: Any, name: str) -> Any:
    plan = quantizer.graph_plan
    return plan.fusions.get(name) if plan is not None else None


def data_free_gaps(quantizer: Any) -> str:
    """What data-free calibration cannot range, in words naming the layers ('' when it can range everything)."""
    problems = []
    if quantizer.adapter.name != "torch":
        return f"it reads the BatchNorm modules of PyTorch models, not those of {quantizer.adapter.name} models"
    if quantizer.whole_graph:
        problems.append("whole-graph quantization (op_types ['default']) has tensors outside any layer")
    inputs = [layer.name for layer in quantizer.layers if quantizer.quantizes(layer, QuantType.QUANT_INPUT)]
    if inputs:
        problems.append(f"the inputs of layers {inputs} have no BatchNorm before them")
    outputs = [layer.name for layer in quantizer.layers if quantizer.quantizes(layer, QuantType.QUANT_OUTPUT)
               and (getattr(_fusion(quantizer, layer.name), "bn", None) is None
                    or quantizer.states[layer.name].calls > 1)]
    if outputs:
        hint = "" if quantizer.graph_plan is not None else " (without dummy_input no BatchNorm is found at all)"
        problems.append(f"the outputs of layers {outputs} are not followed by a BatchNorm folded into them{hint}")
    return "; ".join(problems)


def bn_output_ranges(quantizer: Any, sigmas: float) -> list[tuple[str, str, float, float]]:
    """``(layer, 'output', lo, hi)`` for every quantized output of a layer with a folded BatchNorm."""
    ranges = []
    for layer in quantizer.layers:
        fusion = _fusion(quantizer, layer.name)
        if not quantizer.quantizes(layer, QuantType.QUANT_OUTPUT) or fusion is None or fusion.bn is None:
            continue
        bn = quantizer.model.get_submodule(fusion.bn)
        with torch.no_grad():
            gamma = bn.weight.abs() if bn.weight is not None else torch.ones_like(bn.running_var)
            beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
            lo, hi = float((beta - sigmas * gamma).min()), float((beta + sigmas * gamma).max())
        floor, ceiling = _CLIPS.get(fusion.activation, _CLIPS[None])
        lo, hi = min(max(lo, floor), ceiling), min(max(hi, floor), ceiling)
        ranges.append((layer.name, "output", min(lo, 0.0), max(hi, 0.0)))
    return ranges


__all__ = ["bn_output_ranges", "data_free_gaps"]
