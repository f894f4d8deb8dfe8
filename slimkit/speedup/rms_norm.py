"""RMSNorm written as separate ops (Llama, Qwen2, T5): the hidden size pruned through it exactly.

Hugging Face writes ``LlamaRMSNorm`` / ``Qwen2RMSNorm`` / ``T5LayerNorm`` as ``weight * x * rsqrt(mean(x ** 2, -1) +
eps)``, so the graph holds a ``mean`` over the channel axis, which keeps every channel in general. Inside a module
recognised as an RMSNorm (:func:`rms_norm_eps`: by what it computes, checked on a probe input, not by its name) that
``mean`` couples its input channels with the module's ``weight`` instead: a channel that is zero there adds nothing to
the sum and may go, and the smaller module, a :class:`WideRMSNorm`, still divides by the full width, as the masked
model does.

Example:

>>> import torch
>>> norm = WideRMSNorm(torch.ones(2), full_size=4, eps=1e-6)
>>> x = torch.tensor([[3.0, 4.0]])
>>> torch.allclose(norm(x), x / (25.0 / 4) ** 0.5)
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.speedup.module_ops import _couple_input, const_vector
from slimkit.speedup.ops import reduction_rule
from slimkit.speedup.registry import register_op
from slimkit.speedup.state import KEEP, TensorState
from slimkit.speedup.surgery import _clone, _index, _param

EPS_ATTRIBUTES = ("variance_epsilon", "eps")
"""Attributes an RMSNorm module keeps its epsilon in (Hugging Face: ``variance_epsilon``)."""


class WideRMSNorm(nn.Module):
    """An RMSNorm over the kept channels of ``full_size``, the others zero: the mean square divides by
    ``full_size``. Computes in float32 and multiplies the weight in the input's dtype, as Hugging Face's does.

    Args:
        weight: the kept channels' weight.
        full_size: the number of channels of the RMSNorm it replaces.
        eps: added to the mean square.

    Example:

    >>> import torch
    >>> WideRMSNorm(torch.ones(3), full_size=8)(torch.randn(2, 5, 3)).shape
    torch.Size([2, 5, 3])
    """

    def __init__(self, weight: torch.Tensor, full_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach().clone())
        self.full_size = full_size
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x.to(torch.float32)
        mean_square = hidden.pow(2).sum(-1, keepdim=True) / self.full_size
        return self.weight * (hidden * torch.rsqrt(mean_square + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, full_size={self.full_size}, eps={self.eps}"


def rms_norm_eps(module: nn.Module) -> float | None:
    """The epsilon of ``module`` when it is an RMSNorm: no submodules, one 1-D parameter ``weight``, an epsilon
    attribute (:data:`EPS_ATTRIBUTES`), and on a probe input its output equals ``weight * x * rsqrt(mean(x ** 2, -1)
    + eps)``; else None."""
    if isinstance(module, WideRMSNorm):
        return module.eps
    weight = module._parameters.get("weight")
    eps = next((getattr(module, name) for name in EPS_ATTRIBUTES if isinstance(getattr(module, name, None), float)),
               None)
    if (eps is None or set(module._parameters) != {"weight"} or weight is None or weight.dim() != 1
            or next(module.children(), None) is not None or not weight.is_floating_point()):
        return None
    probe = torch.randn(3, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight)
    with torch.no_grad():
        try:
            got = module(probe)
        except Exception:  # noqa: BLE001 - a module that cannot run on a plain (rows, channels) input is no RMSNorm
            return None
        hidden = probe.to(torch.float32)
        expected = weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)).to(weight.dtype)
    same = isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4,
                                                                                            atol=1e-6)
    return eps if same else None


@register_op("aten::mean.dim")
def rms_mean_rule(ctx: Any, node: torch.fx.Node) -> Any:
    """The mean square over the last axis inside an RMSNorm module: its input channels are the module's (its
    ``weight``'s variables); a zero channel may go, a live or nonzero one is kept. Any other mean: a reduction."""
    path = ctx.captured.module_path(node)
    module = ctx.captured.model.get_submodule(path) if path else None
    source = ctx.state(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else None
    keepdim = len(node.args) > 2 and node.args[2]
    if (module is None or not keepdim or list(dims or ()) not in ([-1], [len(source.shape) - 1])
            or _eps(ctx, path, module) is None):
        return reduction_rule(ctx, node)
    size = module.weight.shape[0]
    ch_vars = ctx.vars(path, "weight", size)
    _couple_input(ctx, source, -1, ch_vars)
    ctx.uf.keep(ch_vars[~(const_vector(source, -1, size) == 0)])
    ctx.modules[path] = module
    ctx.rules[path] = shrink_rms_norm
    ones = (1,) * len(source.shape)
    return TensorState(torch.full(ones, KEEP, dtype=torch.long), torch.full(ones, float("nan"), dtype=torch.float64),
                       ctx.shape(node))


def _eps(ctx: Any, path: str, module: nn.Module) -> float | None:
    key = (path, "rms_norm")
    if key not in ctx.recognised:
        ctx.recognised[key] = rms_norm_eps(module)
    return ctx.recognised[key]


def shrink_rms_norm(module: nn.Module, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    keep: dict[str, Any], folds: dict[int, float]) -> nn.Module:
    """The kept channels as a :class:`WideRMSNorm` (a copy with the masked weight when all are kept)."""
    size = module.weight.shape[0]
    idx = _index(keep.get("weight"), size)
    if len(idx) == size:
        clone = _clone(module)
        clone.weight = _param(weight, module.weight)
        return clone
    wide = WideRMSNorm(_param(weight[idx], module.weight), getattr(module, "full_size", size), rms_norm_eps(module))
    return wide.train(module.training)

