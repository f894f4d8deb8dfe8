"""Several compressors on one layer: which orders work, decided before anything is wrapped.

A compressed layer has exactly one wrapper, and every compressor working on the layer is attached to it
(``wrapper.attached``: their :class:`~slimkit.compression.Layer` objects, bottom first). A pruner's wrapper
applies its masks. A quantizer that comes next replaces it with a fake-quantizing wrapper that applies the
same masks before quantizing the weight, and points the pruner's layers at itself, so the pruner's schedule
(``step()``, ``update_epoch()``) keeps installing masks where the forward reads them. Unwrapping the quantizer
puts the pruner's wrapper back with the current masks; a pruner cannot be unwrapped from under a quantizer.

The orders that work: a pruner on a plain layer, a quantizer on a plain or pruned layer. A second pruner
(masks from two schedules on one weight), a pruner after a quantizer (it would prune fake-quantized weights
whose ranges were set on the unpruned ones) and a second quantizer raise :class:`CompositionError`.

Example:

>>> import torch
>>> from slimkit.algorithms.pruning import LevelPruner
>>> from slimkit.algorithms.quantization import NaiveQuantizer
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
>>> pruner = LevelPruner(model, [{'sparsity': 0.5, 'op_types': ['Linear']}])
>>> quantizer = NaiveQuantizer(model, [{'quant_types': ['weight'], 'op_types': ['Linear']}])
>>> model = quantizer.compress()
>>> pruner.compress()
Traceback (most recent call last):
...
slimkit.errors.CompositionError: Layer '0' is already quantized by NaiveQuantizer, so LevelPruner would prune ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from slimkit.errors import CompositionError

PRUNER, QUANTIZER = "pruner", "quantizer"


def kind_of(compressor: Any) -> str:
    """``'pruner'`` or ``'quantizer'``: the role ``compressor`` plays in a stack (its ``stack_role``)."""
    return getattr(compressor, "stack_role", QUANTIZER)


def _names(layers: Sequence[Any]) -> str:
    return " + ".join({id(layer.owner): type(layer.owner).__name__ for layer in layers}.values())


def stacking_targets(layers: Sequence[Any], wrapper_of: Callable[[Any], Any]) -> dict[str, Any]:
    """The wrappers a compressor stacks on: ``{layer name: existing wrapper}`` for those of ``layers`` already wrapped.

    Every layer is checked before the caller wraps anything, so on an error the model is untouched.

    Args:
        layers: the :class:`~slimkit.compression.Layer` objects a pruner or quantizer (their ``owner``) is about
            to wrap.
        wrapper_of: the framework's lookup of the wrapper a layer has now (None for a plain layer).

    Raises:
        CompositionError: a layer is wrapped in a way ``compressor`` cannot stack on; the message names the
            layer, what wraps it and the order that works.
    """
    targets = {}
    for layer in layers:
        algorithm, kind = type(layer.owner).__name__, kind_of(layer.owner)
        wrapper = wrapper_of(layer)
        if wrapper is None:
            continue
        attached = list(getattr(wrapper, "attached", ()))
        owners = list({id(other.owner): other.owner for other in attached}.values())  # a layer's entries share it
        kinds = [kind_of(owner) for owner in owners]
        if kind == QUANTIZER and kinds == [PRUNER]:
            targets[layer.name] = wrapper
            continue
        raise CompositionError(_refusal(layer.name, algorithm, kind, attached, kinds))
    return targets


def _refusal(name: str, algorithm: str, kind: str, attached: list[Any], kinds: list[str]) -> str:
    if not attached:
        return (f"Layer {name!r} is already wrapped by another compressor. Expected a plain layer, or one pruned "
                f"by a slimkit pruner for a quantizer: export or unwrap_model() the first compressor, or exclude "
                f"{name!r}.")
    by = _names(attached)
    if kind == PRUNER and QUANTIZER in kinds:
        return (f"Layer {name!r} is already quantized by {by}, so {algorithm} would prune fake-quantized weights "
                f"whose quantization ranges were set on the unpruned ones. Expected the order pruner, then "
                f"quantizer: unwrap_model() the quantizer, compress() {algorithm} first and build the quantizer on "
                f"the pruned model after it (or exclude {name!r}).")
    if kind == PRUNER:
        return (f"Layer {name!r} is already wrapped by {by} (a pruner); a second pruner on the same weight would "
                f"fight over one mask with its own schedule. Expected one pruner per layer: select {name!r} in "
                f"one pruner's config_list, or export_model() the first pruner (its zeros baked in) and prune the "
                f"exported model, then quantize.")
    return (f"Layer {name!r} is already wrapped by {by}, which quantizes it; a second quantizer cannot quantize the "
            f"same tensors again. Expected one quantizer per layer, after any pruner: unwrap_model() {by} first, "
            f"or exclude {name!r}.")


def check_unwrap(compressor: Any, layers: Sequence[Any]) -> None:
    """Raise :class:`CompositionError` if another compressor is stacked on one of ``layers`` (unwrap it first)."""
    for layer in layers:
        attached = list(getattr(layer.wrapper, "attached", ()))
        above = [other for other in attached[attached.index(layer) + 1:] if other.owner is not compressor] \
            if layer in attached else []
        if above:
            raise CompositionError(
                f"{type(compressor).__name__}.unwrap_model(): {_names(above)} is stacked on layer {layer.name!r}. "
                f"Expected the compressors unwrapped in the reverse order of compress(): unwrap_model() "
                f"{_names(above)} first.")
