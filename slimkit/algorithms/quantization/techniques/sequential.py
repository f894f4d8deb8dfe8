"""One forward pass that visits every quantized layer in execution order, each on the calibration data as the
quantized model delivers it after the layers before it were adjusted.

Bias correction and AdaRound change a layer from the inputs it receives, and each change moves the inputs of every
later layer. :func:`sequential_pass` gives each layer its input exactly as the final model will see it, at the cost
of one forward: the calibration batches are concatenated into one batch, and a pre-hook on each quantized layer
hands its (quantized) input to ``visit`` *before* the layer runs, so what ``visit`` changes is already in the output
the next layers receive. (The layer-by-layer loop of :mod:`slimkit.frameworks.torch.layer_inputs` would get the
same inputs by re-running the model up to each layer: one partial forward per layer, about 30x slower on
EfficientNet-Lite0.)

Example:

>>> import torch
>>> from slimkit.algorithms.quantization import PostTrainingQuantizer
>>> from slimkit.algorithms.quantization.techniques.sequential import sequential_pass
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
>>> ptq = PostTrainingQuantizer(model, [{'quant_types': ['weight'], 'op_types': ['Linear']}], progress=False)
>>> ptq.calibrate([torch.randn(4, 2), torch.randn(2, 2)])
>>> seen = []
>>> sequential_pass(ptq, [torch.randn(4, 2), torch.randn(2, 2)], lambda layer, x: seen.append((layer.name, x.shape)))
>>> seen
[('0', torch.Size([6, 2])), ('2', torch.Size([6, 3]))]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from slimkit.errors import ConfigError


def concat_batches(batches: list[Any]) -> Any:
    """The batches as one: tensors concatenated along dim 0; ``(inputs, targets)`` tuples by their inputs; dicts
    key by key. Raises :class:`ConfigError` when they do not concatenate (different shapes)."""
    first = batches[0]
    try:
        if isinstance(first, torch.Tensor):
            return torch.cat(batches)
        if isinstance(first, dict):
            return {key: torch.cat([batch[key] for batch in batches]) for key in first}
        if isinstance(first, (tuple, list)):
            inputs = [batch[0] for batch in batches]
            if isinstance(inputs[0], (tuple, list)):
                return (tuple(torch.cat(parts) for parts in zip(*inputs)),)
            return (torch.cat(inputs),)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"The calibration batches do not concatenate into one ({error}). Expected batches of the "
                          "same shape except the first dimension.") from error
    raise ConfigError(f"Expected calibration batches of tensors, (inputs, targets) tuples or dicts. Received: "
                      f"{type(first).__name__}")


def kernel_input(quantizer: Any, layer: Any, args: tuple) -> torch.Tensor:
    """What ``layer``'s kernel computes on: its first input, quantized when the layer quantizes its input."""
    return quantizer.forward_input(layer, args, 0)[0]


@contextlib.contextmanager
def float_model(quantizer: Any) -> Iterator[None]:
    """The wrapped model computing the float model for the block: no fake quantization (weights, inputs, outputs,
    whole-graph tensors, the int32 bias grid), and the float weights a technique replaced by their rounded values
    (``quantizer.float_weights``, written by AdaRound and gptq) put back."""
    replaced = getattr(quantizer, "float_weights", {})
    rounded = {}
    by_name = {layer.name: layer for layer in quantizer.layers}
    # instance attributes shadow the methods for the block (the int32 bias grid goes with 'quantizes')
    quantizer.should_fake_quant = lambda layer: False
    quantizer.quantizes = lambda layer, qtype: False
    try:
        with torch.no_grad():
            for name, weight in replaced.items():
                rounded[name] = by_name[name].module.weight.detach().clone()
                by_name[name].module.weight.copy_(weight)
        yield
    finally:
        del quantizer.should_fake_quant, quantizer.quantizes
        with torch.no_grad():
            for name, weight in rounded.items():
                by_name[name].module.weight.copy_(weight)


def sequential_pass(quantizer: Any, batches: list[Any], visit: Callable[[Any, torch.Tensor], None]) -> None:
    """Run the (wrapped, calibrated) model once on ``batches`` concatenated; call ``visit(layer, x)`` for each quantized
    layer (called once per forward) before it runs, with the input its kernel receives (inside :func:`float_model`:
    the float model's input of that layer)."""
    model, handles = quantizer.model, []
    for layer in quantizer.layers:
        if layer.wrapper is None or quantizer.states[layer.name].calls != 1:
            continue

        def hook(module: Any, args: tuple, layer: Any = layer) -> None:
            # outside whole-graph mode's function mode: what visit computes is not part of the model's graph
            with torch._C.DisableTorchFunction():
                visit(layer, kernel_input(quantizer, layer, args))

        handles.append(layer.wrapper.register_forward_pre_hook(hook))
    try:
        with quantizer.backend.inference(model):
            quantizer.backend.run_batch(model, concat_batches(batches))
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["concat_batches", "float_model", "kernel_input", "sequential_pass"]
