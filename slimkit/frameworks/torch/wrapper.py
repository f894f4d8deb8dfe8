"""The module that stands in for a compressed PyTorch layer.

Masks are buffers and are applied in ``forward``; the wrapped module's parameters are never
written, so unwrapping gives back exactly the module that was wrapped. The wrapper is transparent
to model code: a public attribute it does not have itself (``weight``, ``bias``, ``stride``,
``in_features``, ...) is read from the wrapped layer, so code such as Hugging Face's
``self.wo.weight.dtype`` keeps working on a wrapped layer. Parameters still live only in the
wrapped layer (state-dict keys ``<name>.module.weight``).

Example:

>>> import torch
>>> from slimkit.frameworks.torch.wrapper import CompressionWrapper
>>> linear = torch.nn.Linear(2, 2)
>>> wrapper = CompressionWrapper(linear, 'fc')
>>> wrapper.weight_mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> x = torch.ones(1, 2)
>>> torch.allclose(wrapper(x), x @ (linear.weight * wrapper.weight_mask).T + linear.bias)
True
>>> wrapper.weight is linear.weight, wrapper.in_features
(True, 2)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from slimkit.frameworks.torch.layout import param_name


def _conv_call(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, args: tuple) -> Any:
    return module._conv_forward(args[0], weight, bias)


def _linear_call(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, args: tuple) -> Any:
    return F.linear(args[0], weight, bias)


# Module types whose forward is one functional call on (input, weight, bias): called directly,
# which is cheaper than torch.func.functional_call's parameter swapping.
_DIRECT_CALLS = {nn.Conv1d: _conv_call, nn.Conv2d: _conv_call, nn.Conv3d: _conv_call, nn.Linear: _linear_call}


class Ref:
    """Holds Python objects on a module without registering them (and survives deepcopy as is)."""

    def __init__(self, **values: Any):
        self.__dict__.update(values)

    def __deepcopy__(self, memo: dict) -> Ref:
        return self


class _Stack(Ref):
    """The compressors attached to a wrapper and the wrapper it stacked on. Pickled empty: a pickled model carries its
    layers and masks, not the compressors that were working on them."""

    def __init__(self, attached: list[Any] | None = None, below: nn.Module | None = None):
        super().__init__(attached=attached if attached is not None else [], below=below)

    def __reduce__(self) -> tuple:
        return _Stack, ()


# a module's forward hook tables: shared by a wrapper and the one it stacks on, so hook handles stay valid
_HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
                "_forward_pre_hooks_with_kwargs")


class CompressionWrapper(nn.Module):
    """Applies a weight / bias mask to ``module`` on every forward.

    Args:
        module: the layer being compressed (kept as the child ``module``).
        layer_name: its qualified name in the model.

    ``kernel``: the parameter standing for ``weight`` when the layer is compressed through another one
    (``'in_proj_weight'`` of ``nn.MultiheadAttention``: :data:`slimkit.frameworks.torch.layout.KERNELS`); the layer's
    bias is then left as is. :meth:`param` reads a parameter by its role (``'weight'`` / ``'bias'``).

    Buffers ``weight_mask`` and ``bias_mask`` are None until a pruner sets them. ``attached`` lists the
    :class:`~slimkit.compression.Layer` objects of the compressors working through this wrapper, bottom first
    (a pruner, then a quantizer stacked on it: :mod:`slimkit.compression.composition`).
    """

    def __init__(self, module: nn.Module, layer_name: str, kernel: str | None = None):
        super().__init__()
        self.module = module
        self.layer_name = layer_name
        self._names = Ref(weight=param_name("weight", kernel), bias=param_name("bias", kernel))
        self.register_buffer("weight_mask", None)
        self.register_buffer("bias_mask", None)
        self._stack = _Stack()

    def param(self, kind: str) -> torch.Tensor | None:
        """The wrapped layer's ``'weight'`` or ``'bias'`` (by role: ``in_proj_weight`` for a MultiheadAttention), or
        None."""
        name = getattr(self._names, kind)
        value = getattr(self.module, name, None) if name else None
        return value if isinstance(value, torch.Tensor) else None

    @property
    def attached(self) -> list[Any]:
        return self._stack.attached

    def stack_on(self, below: CompressionWrapper) -> None:
        """Take the place of ``below`` (a pruner's wrapper): its masks, forward hooks and attached compressors, whose
        layers now point here, so their masks keep applying under this wrapper."""
        self.weight_mask, self.bias_mask = below.weight_mask, below.bias_mask
        for table in _HOOK_TABLES:
            setattr(self, table, getattr(below, table))
        self._stack = _Stack(list(below.attached), below)
        for layer in below.attached:
            layer.wrapper = self

    def unstack(self) -> nn.Module:
        """What goes back in this wrapper's place: the wrapper it stacked on (with the current masks, its compressors'
        layers pointing at it again), else the wrapped module."""
        below = self._stack.below
        if below is None:
            return self.module
        below.weight_mask, below.bias_mask = self.weight_mask, self.bias_mask
        for layer in below.attached:
            layer.wrapper = below
        return below

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # public attributes read through to the wrapped layer; private and dunder names never do (copy,
            # pickling and hooks must see the wrapper itself)
            module = self.__dict__.get("_modules", {}).get("module")
            if module is None or name.startswith("_"):
                raise
            return getattr(module, name)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        # A mask is None until a pruner sets one, so a checkpoint may hold a mask this wrapper has not got yet (a
        # filter pruner's bias mask) or lack one it has: the saved masks are taken as they are (a missing one is
        # None again under strict loading), so a rebuilt, compressed model loads its checkpoint.
        like = self.param("weight")
        for name in ("weight_mask", "bias_mask"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor):
                if self._buffers[name] is None:
                    self._buffers[name] = torch.empty_like(saved, dtype=like.dtype if like is not None else None,
                                                           device=like.device if like is not None else None)
            elif strict:
                self._buffers[name] = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def effective_parameters(self) -> dict[str, torch.Tensor]:
        """Parameters that differ from the module's own in this forward (masked weight / bias)."""
        overrides = {}
        if self.weight_mask is not None:
            overrides["weight"] = self.param("weight") * self.weight_mask
        bias = self.param("bias")
        if self.bias_mask is not None and bias is not None:
            overrides["bias"] = bias * self.bias_mask
        return overrides

    def call_module(self, overrides: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> Any:
        """Run the wrapped module with ``overrides`` (by role: ``'weight'`` / ``'bias'``) in place of its
        parameters."""
        if not overrides:
            return self.module(*args, **kwargs)
        direct = _DIRECT_CALLS.get(type(self.module))
        if direct is not None and not kwargs and len(args) == 1:
            return direct(self.module, overrides.get("weight", self.module.weight),
                          overrides.get("bias", self.module.bias), args)
        named = {getattr(self._names, kind): value for kind, value in overrides.items() if getattr(self._names, kind)}
        return torch.func.functional_call(self.module, named, args, kwargs, strict=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.call_module(self.effective_parameters(), args, kwargs)

    def extra_repr(self) -> str:
        return f"layer_name={self.layer_name!r}"
