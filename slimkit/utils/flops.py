"""Counting multiply-accumulates and parameters of a PyTorch model on an example input.

Example:

>>> import torch
>>> from slimkit.utils import count_flops_params
>>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, bias=False), torch.nn.Flatten(), torch.nn.Linear(8, 3))
>>> flops, params, results = count_flops_params(model, torch.randn(1, 1, 4, 4))
>>> flops, params   # conv: 2*2*2 outputs x 9 MACs = 72; linear: 8 x 3 = 24 (+3 bias adds not counted)
(96, 45)
>>> [r['name'] for r in results]
['0', '2']
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _conv_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    kernel = 1
    for k in module.kernel_size:
        kernel *= k
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return int(inputs[0].numel() // inputs[0].shape[0] * kernel * module.out_channels // module.groups)
    return int(output.numel() // output.shape[0] * kernel * module.in_channels // module.groups)


def _linear_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    return int(output.numel() // output.shape[0] * module.in_features)


def _norm_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    return int(output.numel() // output.shape[0])


_COUNTERS = {nn.Conv1d: _conv_macs, nn.Conv2d: _conv_macs, nn.Conv3d: _conv_macs, nn.ConvTranspose1d: _conv_macs,
             nn.ConvTranspose2d: _conv_macs, nn.ConvTranspose3d: _conv_macs, nn.Linear: _linear_macs,
             nn.BatchNorm1d: _norm_macs, nn.BatchNorm2d: _norm_macs, nn.BatchNorm3d: _norm_macs}


def count_flops_params(model: nn.Module, dummy_input: Any, verbose: bool = False) -> tuple[int, int, list[dict]]:
    """Multiply-accumulates per sample (conv, linear, batch-norm) and parameter count of ``model``.

    Args:
        model: the model (run once in eval mode, without gradients; its mode is restored).
        dummy_input: an input tensor, or a tuple of inputs.
        verbose: log one line per counted layer (logger ``slimkit.utils.flops``, level INFO).

    Returns:
        ``(flops, params, results)``: MACs for one sample, the number of parameters of the whole
        model, and per counted layer ``{'name', 'type', 'flops', 'params', 'input_shape', 'output_shape'}``
        (the NNI ``count_flops_params`` convention).
    """
    _, flops, results = profile(model, dummy_input)
    params = sum(p.numel() for p in model.parameters())
    if verbose:
        for r in results:
            logger.info("%-40s %-16s flops=%12s params=%10s", r["name"], r["type"], f"{r['flops']:,d}",
                        f"{r['params']:,d}")
        logger.info("total: flops=%s params=%s", f"{flops:,d}", f"{params:,d}")
    return flops, params, results


def profile(model: nn.Module, dummy_input: Any, call: Any = None) -> tuple[Any, int, list[dict]]:
    """Run ``model`` once (eval mode, no grad) counting MACs; returns ``(output, flops, results)``.

    ``call(inputs)`` replaces ``model(*inputs)`` when given (e.g. a ``functional_call`` with masked weights).
    """
    inputs = dummy_input if isinstance(dummy_input, (tuple, list)) else (dummy_input,)
    results: list[dict] = []
    handles = []
    for name, module in model.named_modules():
        counter = _COUNTERS.get(type(module))
        if counter is None:
            continue

        def hook(mod: nn.Module, args: tuple, output: Any, name: str = name, counter: Any = counter) -> None:
            results.append({"name": name, "type": type(mod).__name__, "flops": counter(mod, args, output),
                            "params": sum(p.numel() for p in mod.parameters(recurse=False)),
                            "input_shape": tuple(args[0].shape), "output_shape": tuple(output.shape)})

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = call(inputs) if call is not None else model(*inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return output, sum(r["flops"] for r in results), results
