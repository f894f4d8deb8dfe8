"""Refuse a capture whose outputs do not have the shapes the model's own forward gives.

A forward that behaves differently while traced (it tests ``type(x) is torch.Tensor``, which is False
for the fake tensors of a trace, or reads a global switched by tracing) yields a graph that computes
something else than the model, and a file converted from it is silently wrong. One eager forward on the
example input catches the visible cases: an output of another shape or dtype, or another number of outputs.

Example:

>>> import torch
>>> from slimkit.converter.eager_check import check_outputs_match
>>> check_outputs_match([torch.zeros(1, 3)], [torch.empty(1, 3)], 'M')
>>> check_outputs_match([torch.zeros(3)], [torch.empty(1, 3)], 'M')
Traceback (most recent call last):
...
slimkit.errors.UnsupportedModelError: M: the captured graph's output 0 has shape (3,) float32, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

from slimkit.errors import UnsupportedModelError


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def graph_outputs(program: Any) -> list[Any]:
    """The example values (fake tensors) of a captured program's tensor outputs, flattened."""
    output = next(node for node in reversed(program.graph.nodes) if node.op == "output")
    values = [leaf.meta.get("val") for leaf in pytree.tree_leaves(output.args) if isinstance(leaf, torch.fx.Node)]
    return [value for value in values if isinstance(value, torch.Tensor)]


def eager_outputs(model: torch.nn.Module, inputs: tuple) -> list[Any]:
    """The model's own outputs on ``inputs`` (eval mode, no grad; every module's mode restored), flattened."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return pytree.tree_leaves(model(*inputs))
    finally:
        for module, mode in modes.items():
            module.training = mode


def _same_shape(graph_shape: Sequence[Any], shape: Sequence[int]) -> bool:
    """Equal ranks, and equal sizes wherever the graph's size is a plain int (data-dependent sizes match any)."""
    return len(graph_shape) == len(shape) and all(not isinstance(g, int) or g == s for g, s in zip(graph_shape, shape))


def check_outputs_match(captured: Sequence[Any], eager: Sequence[Any], model_name: str) -> None:
    """Raise if the captured outputs differ from the eager ones in number, shape or dtype.

    Raises:
        UnsupportedModelError: naming the first output that differs and both descriptions.
    """
    tensors = [value for value in eager if isinstance(value, torch.Tensor)]
    if len(captured) != len(tensors):
        raise UnsupportedModelError(
            f"{model_name}: the captured graph has {len(captured)} outputs, the model's forward returns "
            f"{len(tensors)} tensors. The forward behaves differently while traced; make it trace-stable "
            "(no type(x) is torch.Tensor tests or tracing-dependent branches) before converting.")
    for index, (graph_value, value) in enumerate(zip(captured, tensors)):
        same = isinstance(graph_value, torch.Tensor) and _same_shape(graph_value.shape, value.shape) \
            and graph_value.dtype == value.dtype
        if not same:
            raise UnsupportedModelError(
                f"{model_name}: the captured graph's output {index} has shape {_describe(graph_value)}, the "
                f"model's forward gives {_describe(value)}. The forward behaves differently while traced (it "
                "tests type(x) is torch.Tensor, or branches on something tracing changes), so the file would "
                "compute something else. Make the forward trace-stable before converting; nothing was written.")
