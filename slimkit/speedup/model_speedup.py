"""``ModelSpeedup``: turn a masked PyTorch model into a smaller plain one, in place.

Example:

>>> import torch
>>> from slimkit.speedup import ModelSpeedup
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
>>> keep = torch.tensor([1.0, 0.0, 1.0, 0.0])
>>> masks = {'0': {'weight': keep.view(4, 1, 1, 1).expand(4, 3, 3, 3).clone(), 'bias': keep}}
>>> speedup = ModelSpeedup(model, torch.randn(1, 3, 8, 8), masks)
>>> model = speedup.speedup_model()
>>> report = speedup.report
>>> model[0], model[2]
(Conv2d(3, 2, kernel_size=(3, 3), stride=(1, 1)), Conv2d(2, 2, kernel_size=(1, 1), stride=(1, 1)))
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import SlimkitError, UnsupportedOpError
from slimkit.frameworks.torch.adapter import set_submodule
from slimkit.frameworks.torch.wrapper import CompressionWrapper
from slimkit.speedup.analysis import Plan, analyse
from slimkit.speedup.capture import capture, forget
from slimkit.speedup.module_ops import is_transposed_linear
from slimkit.speedup.parameters import free_parameter_names
from slimkit.speedup.registry import MODULE_RULES, ensure_loaded, module_rule
from slimkit.speedup.report import LayerChange, SpeedupReport
from slimkit.speedup.residual import RESIDUAL_MODULES, residual_changes
from slimkit.utils.flops import profile
from slimkit.utils.threads import single_thread


def _parameter_shapes(model: nn.Module) -> dict[str, dict[str, tuple[int, ...] | None]]:
    """``{name: {'weight': shape, 'bias': shape or None}}`` of every module with a weight tensor, and of every free
    parameter (``'<module>.<attribute>'``, its mask under ``'weight'``: :mod:`slimkit.speedup.parameters`)."""
    shapes = {}
    for name, module in model.named_modules():
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor):
            shapes[name] = {"weight": tuple(weight.shape),
                            "bias": tuple(bias.shape) if isinstance(bias, torch.Tensor) else None}
    shapes.update({name: {"weight": shape, "bias": None} for name, shape in free_parameter_names(model).items()})
    return shapes


def _masked_tensor(model: nn.Module, name: str) -> tuple[nn.Module, str, str]:
    """``(module, attribute, qualified parameter name)`` of the tensor a mask entry's 'weight' covers: the module's
    weight, or a free parameter named ``'<module>.<attribute>'``."""
    if name in dict(model.named_modules()):
        return model.get_submodule(name), "weight", f"{name}.weight" if name else "weight"
    path, _, attribute = name.rpartition(".")
    return model.get_submodule(path), attribute, name


class ModelSpeedup:
    """Make a pruned model's masks physical: layers with fewer channels, same outputs.

    A functional or Sequential ``keras.Model`` is handed to
    :class:`slimkit.frameworks.tensorflow.speedup.KerasModelSpeedup`: ``speedup_model()`` then returns a new,
    smaller ``keras.Model`` (the input model is unchanged) and :attr:`report` holds the :class:`SpeedupReport`.

    Args:
        model: the plain (unwrapped) ``torch.nn.Module`` the masks were computed for; it is changed in place.
            Or a plain functional / Sequential ``keras.Model``.
        dummy_input: an example input (tensor or tuple of tensors) used to capture the graph.
        masks_or_mask_path: ``{layer_name: {'weight': mask, 'bias': mask or None}}`` (as
            ``Pruner.get_masks()`` returns) or the path of a mask file (``export_model(mask_path=...)``). A free
            parameter (an ``nn.Parameter`` attribute such as ViT's ``cls_token``) is named
            ``'<module>.<attribute>'``, its mask under ``'weight'`` (:mod:`slimkit.speedup.parameters`).
        tolerance: largest relative difference to the masked model accepted when checking the result.
        verify: compare the result with the masked model on ``dummy_input``; on a mismatch the model
            is restored and a :class:`slimkit.SlimkitError` is raised.

    Raises:
        UnsupportedOpError: the graph holds an operator the channel analysis does not know (the model is
            left as it was).
        MaskError: (at construction) masks that name no layer of the model with a weight, have a key other than
            'weight' / 'bias', or are not 0/1 tensors of a real dtype and of their parameter's shape.
        FileFormatError: (at construction) a mask file that is damaged or not a mask file.
        SlimkitError: a wrapped model.
        UnsupportedModelError: (at construction) a model of no supported framework; a subclassed or nested Keras
            model (see :class:`~slimkit.frameworks.tensorflow.speedup.KerasModelSpeedup`).
    """

    def __init__(self, model: Any, dummy_input: Any, masks_or_mask_path: Any, *, tolerance: float = 1e-5,
                 verify: bool = True):
        from slimkit.compression.adapter import framework_of
        from slimkit.masks import check_masks, load_masks

        self.model = model
        self.report: SpeedupReport | None = None
        self._keras = None
        if framework_of(model) == "keras":
            from slimkit.frameworks.tensorflow.speedup import KerasModelSpeedup

            self._keras = KerasModelSpeedup(model, dummy_input, masks_or_mask_path, tolerance=tolerance, verify=verify)
            return
        self._check_model()
        source = "masks"
        if isinstance(masks_or_mask_path, (str, os.PathLike)):
            source, masks_or_mask_path = os.fspath(masks_or_mask_path), load_masks(masks_or_mask_path)
        self.masks = check_masks(masks_or_mask_path, _parameter_shapes(model), source=f"ModelSpeedup: {source}")
        self.dummy_input = dummy_input if isinstance(dummy_input, (tuple, list)) else (dummy_input,)
        self.tolerance = tolerance
        self.verify = verify

    # ------------------------------------------------------------------------------------------
    def _check_model(self) -> None:
        for name, module in self.model.named_modules():
            if isinstance(module, CompressionWrapper):
                raise SlimkitError(
                    f"Layer {name!r} is still wrapped by a compressor. Expected the plain model: call "
                    f"pruner.unwrap_model() (or load the exported weights into a fresh model) before speedup.")

    def _masked_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        weights = {}
        for name, entry in self.masks.items():  # checked against the model's shapes at construction
            module, attribute, _ = _masked_tensor(self.model, name)
            weight = getattr(module, attribute).detach()
            mask = torch.as_tensor(entry["weight"], dtype=weight.dtype, device=weight.device)
            bias = getattr(module, "bias", None) if attribute == "weight" else None
            bias = bias.detach() if isinstance(bias, torch.Tensor) else None
            if bias is not None and entry["bias"] is not None:
                bias = bias * torch.as_tensor(entry["bias"], dtype=bias.dtype, device=bias.device)
            weights[name] = (weight * mask, bias)
        return weights

    def _reference(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[Any, int]:
        overrides = {}
        for name, (weight, bias) in weights.items():
            overrides[_masked_tensor(self.model, name)[2]] = weight
            if bias is not None:
                overrides[f"{name}.bias"] = bias

        def call(inputs: tuple) -> Any:
            return torch.func.functional_call(self.model, overrides, inputs, strict=False, tie_weights=False)

        output, flops, _ = profile(self.model, self.dummy_input, call)
        return output, flops

    def speedup_model(self) -> Any:
        """Analyse the graph, then replace the pruned layers in place and return the model (for a Keras model: a
        new, smaller ``keras.Model``). What changed is in :attr:`report` (a :class:`SpeedupReport`)."""
        if self._keras is not None:
            small = self._keras.speedup_model()
            self.report = self._keras.report
            return small
        ensure_loaded()
        start = time.perf_counter()
        timings = {}
        self._check_model()
        weights = self._masked_weights()
        params_before = sum(p.numel() for p in self.model.parameters())
        with single_thread():
            reference, flops_before = self._reference(weights) if self.verify else (None, 0)
        timings["reference"] = time.perf_counter() - start
        with single_thread():
            captured = capture(self.model, tuple(self.dummy_input))
        timings["capture"] = time.perf_counter() - start - timings["reference"]
        plan = analyse(captured, weights)
        timings["analyse"] = time.perf_counter() - start - timings["reference"] - timings["capture"]
        try:
            replacements, originals, error, flops_after = self._apply(plan, weights, reference)
        except _ForwardFailed as failure:
            shrunk = residual_changes(plan)
            if not shrunk:
                raise failure.error from failure.__cause__
            warnings.warn(f"Speedup keeps the hidden size: the model's forward failed with the residual stream of "
                          f"{shrunk[:3]} narrowed ({failure.__cause__}), so its code reads that size (a reshape to "
                          f"the hidden width, a head size computed from it). The masked hidden channels stay, as "
                          f"zeros; exclude the layers writing the residual stream to keep them unmasked.",
                          stacklevel=2)
            plan = analyse(captured, weights, keep_modules=RESIDUAL_MODULES)
            replacements, originals, error, flops_after = self._apply(plan, weights, reference)
        timings["surgery+verify"] = time.perf_counter() - start - sum(timings.values())
        changes = [_change(name, originals[name], module) for name, module in replacements.items()
                   if _channels(originals[name]) != _channels(module)]
        self.report = SpeedupReport(changes, params_before, sum(p.numel() for p in self.model.parameters()),
                                    flops_before, flops_after, time.perf_counter() - start, error, timings)
        return self.model

    def _apply(self, plan: Plan, weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
               reference: Any) -> tuple[dict[str, nn.Module], dict[str, nn.Module], float | None, int]:
        """Replace the layers as ``plan`` says and check the result; restore the model on any failure."""
        with single_thread():
            replacements = self._build(plan, weights)  # everything is decided before the model is touched
        forget()
        originals = {}
        for name, module in replacements.items():
            originals[name] = self.model.get_submodule(name)
            set_submodule(self.model, name, module)
        attributes = {(path, attr): getattr(self.model.get_submodule(path), attr)
                      for path, values in plan.attributes.items() for attr in values}
        for path, values in plan.attributes.items():
            for attr, value in values.items():
                setattr(self.model.get_submodule(path), attr, value)
        error = None
        flops_after = 0
        if self.verify:
            try:
                with single_thread():
                    output, flops_after, _ = profile(self.model, self.dummy_input)
                error = _relative_error(output, reference)
            except Exception as failure:  # a shape mismatch in the user's forward after surgery
                self._restore(originals, attributes)
                raise _ForwardFailed(SlimkitError(
                    f"Speedup produced a model whose forward fails ({type(failure).__name__}: {failure}); the model "
                    f"was restored. This usually means the forward hard-codes a channel count; exclude the layers "
                    f"feeding it.")) from failure
            if not error <= self.tolerance:
                self._restore(originals, attributes)
                raise SlimkitError(f"Speedup changed the model's output (relative error {error:.3g} > tolerance "
                                   f"{self.tolerance:g}); the model was restored. Please report this model.")
        return replacements, originals, error, flops_after

    def _restore(self, originals: dict[str, nn.Module], attributes: dict[tuple[str, str], Any]) -> None:
        for name, module in originals.items():
            set_submodule(self.model, name, module)
        for (path, attr), value in attributes.items():
            setattr(self.model.get_submodule(path), attr, value)

    def _build(self, plan: Plan, weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, nn.Module]:
        keep_by_module: dict[str, dict[str, np.ndarray]] = {}
        for (path, role), keep in plan.keep.items():
            keep_by_module.setdefault(path, {})[role] = keep
        names = [name for name, _ in self.model.named_modules()]
        owners = {path for path, _ in plan.parameters if path in plan.rules}  # free parameters: masked values baked
        targets = [n for n in names if n in weights or n in plan.folds or n in owners
                   or any(not k.all() for k in keep_by_module.get(n, {}).values())]
        replacements = {}
        for name in targets:
            module = self.model.get_submodule(name)
            rule = plan.rules.get(name) or module_rule(module)
            if rule is None:
                raise UnsupportedOpError(
                    f"Speedup cannot rebuild layer {name!r} of type {type(module).__name__}. Expected one of "
                    f"{sorted(getattr(t, '__name__', t) for t in MODULE_RULES)}; exclude {name!r} from pruning.")
            weight, bias = weights.get(name) or (getattr(module, "weight", None), getattr(module, "bias", None))
            weight = weight.detach() if isinstance(weight, torch.Tensor) else None
            bias = bias.detach() if isinstance(bias, torch.Tensor) else None
            replacements[name] = rule(module, weight, bias, keep_by_module.get(name, {}), plan.folds.get(name, {}))
        return replacements


class _ForwardFailed(Exception):
    """The sped-up model's forward raised; ``error`` is the :class:`SlimkitError` to report."""

    def __init__(self, error: SlimkitError):
        super().__init__(str(error))
        self.error = error


def _channels(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, module.out_channels
    if is_transposed_linear(module):
        return tuple(module.weight.shape)
    if isinstance(module, nn.Embedding):
        return module.embedding_dim, module.embedding_dim
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0], module.normalized_shape[0]
    count = getattr(module, "num_features", getattr(module, "num_parameters", 0))
    return count, count


def _change(name: str, before: nn.Module, after: nn.Module) -> LayerChange:
    (in_b, out_b), (in_a, out_a) = _channels(before), _channels(after)
    return LayerChange(name, type(before).__name__, in_b, in_a, out_b, out_a)


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _flatten(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten(v)]
    return []


def _relative_error(output: Any, reference: Any) -> float:
    worst = 0.0
    for out, ref in zip(_flatten(output), _flatten(reference)):
        if out.shape != ref.shape:
            return float("inf")
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        diff = float((out - ref).abs().max()) if ref.numel() else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst
