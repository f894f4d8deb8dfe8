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


def _conv_call(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, args: tuple) -> Any:
    return module._conv_forward(args[0], weight, bias)


def _linear_call(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, args: tuple) -> Any:
    return F.linear(args[0], weight, bias)


# Module types whose forward is one functional call on (input, weight, bias): called directly,
# which is cheaper than torch.func.functional_call's parameter swapping.
_DIRECT_CALLS = {nn.Conv1d: _conv_call, nn.Conv2d: _conv_call, nn.Conv3d: _conv_call, nn.Linear: _linear_call}


class CompressionWrapper(nn.Module):
    """Applies a weight / bias mask to ``module`` on every forward.

    Args:
        module: the layer being compressed (kept as the child ``module``).
        layer_name: its qualified name in the model.

    Buffers ``weight_mask`` and ``bias_mask`` are None until a pruner sets them.
    """

    def __init__(self, module: nn.Module, layer_name: str):
        super().__init__()
        self.module = module
        self.layer_name = layer_name
        self.register_buffer("weight_mask", None)
        self.register_buffer("bias_mask", None)

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

    def effective_parameters(self) -> dict[str, torch.Tensor]:
        """Parameters that differ from the module's own in this forward (masked weight / bias)."""
        overrides = {}
        if self.weight_mask is not None:
            overrides["weight"] = self.module.weight * self.weight_mask
        if self.bias_mask is not None and self.module.bias is not None:
            overrides["bias"] = self.module.bias * self.bias_mask
        return overrides

    def call_module(self, overrides: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> Any:
        """Run the wrapped module with ``overrides`` in place of its parameters."""
        if not overrides:
            return self.module(*args, **kwargs)
        direct = _DIRECT_CALLS.get(type(self.module))
        if direct is not None and not kwargs and len(args) == 1:
            return direct(self.module, overrides.get("weight", self.module.weight),
                          overrides.get("bias", self.module.bias), args)
        return torch.func.functional_call(self.module, overrides, args, kwargs, strict=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.call_module(self.effective_parameters(), args, kwargs)

    def extra_repr(self) -> str:
        return f"layer_name={self.layer_name!r}"
