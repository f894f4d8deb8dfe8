"""The hidden size of a transformer: embeddings and LayerNorm on the residual stream.

A channel of the residual stream is pruned by masking it everywhere it is made: the output rows of every linear
layer writing the stream, the columns of the embeddings, and the LayerNorm weight and bias (a dependency-aware
filter pruner masks them as one group: :mod:`slimkit.compression.followers`). The channel is then zero all along the
stream, and every layer reading it drops its input column.

A LayerNorm still counts the zero channel in its statistics: over ``n`` channels of which ``k`` are kept, the masked
model computes ``mean = sum(x) / n`` and ``var = (sum((x - mean) ** 2) + (n - k) * mean ** 2) / n``. The sped-up
model keeps that exactly with :class:`WideLayerNorm`, a LayerNorm over the ``k`` kept channels of ``n``.

Example:

>>> import torch
>>> wide = torch.nn.LayerNorm(4)
>>> x = torch.tensor([[1.0, 0.0, 3.0, 0.0]])
>>> norm = WideLayerNorm(2, 4, eps=wide.eps)
>>> torch.allclose(norm(x[:, [0, 2]]), wide(x)[:, [0, 2]], atol=1e-6)
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.compression.channels import channel_view
from slimkit.speedup.module_ops import _couple_input, const_vector, norm_keep_rule
from slimkit.speedup.ops import mixing_rule
from slimkit.speedup.registry import register_module, register_op
from slimkit.speedup.state import TensorState
from slimkit.speedup.surgery import _clone, _index, _param

NAN = float("nan")
RESIDUAL_MODULES = (nn.LayerNorm, nn.Embedding)
"""Modules whose channels are the hidden size: a model's code may read that size (ModelSpeedup then keeps it)."""


class WideLayerNorm(nn.LayerNorm):
    """A LayerNorm over ``normalized_shape`` kept channels of ``full_size``, the others zero.

    Normalises as the wider LayerNorm does on its input with zeros in the removed channels, and returns the kept
    channels: the mean divides by ``full_size``, and each removed channel adds ``mean ** 2`` to the variance.

    Args:
        normalized_shape: the number of kept channels (the last axis of the input).
        full_size: the number of channels of the LayerNorm it replaces.
        eps, elementwise_affine, bias: as for ``torch.nn.LayerNorm``.

    Example:

    >>> import torch
    >>> norm = WideLayerNorm(3, 8)
    >>> norm(torch.randn(2, 5, 3)).shape
    torch.Size([2, 5, 3])
    """

    def __init__(self, normalized_shape: int, full_size: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias)
        self.full_size = full_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = x.shape[-1]
        mean = x.sum(-1, keepdim=True) / self.full_size
        centred = x - mean
        var = (centred.pow(2).sum(-1, keepdim=True) + (self.full_size - kept) * mean.pow(2)) / self.full_size
        out = centred * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, full_size={self.full_size}"

    def __reduce_ex__(self, protocol: Any) -> Any:
        base = type(self).__mro__[1]  # a wide_class(base) is built at speedup: pickled by its base
        if type(self) is WideLayerNorm:
            return super().__reduce_ex__(protocol)
        return _new_wide, (base,), self.__getstate__()


def _new_wide(base: type) -> nn.Module:
    cls = wide_class(base)
    return cls.__new__(cls)


_WIDE_CLASSES: dict[type, type] = {nn.LayerNorm: WideLayerNorm}


def wide_class(cls: type) -> type:
    """The class of a LayerNorm of class ``cls`` over fewer channels than it had: :class:`WideLayerNorm`, or for a
    subclass (Hugging Face's ``ConvNextLayerNorm``, which permutes channels-first input around
    ``super().forward``) a class deriving from both, whose inherited forward then normalises as the wider one."""
    if issubclass(cls, WideLayerNorm):
        return cls
    if cls not in _WIDE_CLASSES:
        _WIDE_CLASSES[cls] = type(f"Wide{cls.__name__}", (cls, WideLayerNorm), {"__module__": __name__})
    return _WIDE_CLASSES[cls]


@register_op("aten::layer_norm")
def layer_norm_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    """A LayerNorm module over the last axis: a channel may go where its input is 0 (it then adds only to the
    statistics, which :class:`WideLayerNorm` keeps). Its output is ``bias`` where the weight is masked, else live."""
    weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
    normalized = node.args[1]
    path = _module_path(ctx, weight, nn.LayerNorm)
    if path is None or len(normalized) != 1:
        return norm_keep_rule(ctx, node)
    path, module = ctx.module_of(node, weight, nn.LayerNorm)
    state = ctx.state(node.args[0])
    size = module.normalized_shape[0]
    ch_vars = ctx.vars(path, "ch", size)
    _couple_input(ctx, state, -1, ch_vars)
    consts = const_vector(state, -1, size)
    ctx.uf.keep(ch_vars[~(consts == 0)])  # a live or nonzero channel counts in the statistics
    w, b = ctx.weights(path)
    w = w.detach().cpu().to(torch.float64)
    b = torch.zeros_like(w) if b is None else b.to(torch.float64)
    out = torch.where(w == 0, b, torch.full_like(w, NAN))
    rank = len(state.shape)
    return TensorState(channel_view(ch_vars, rank, -1), channel_view(out, rank, -1), ctx.shape(node))


@register_op("aten::embedding")
def embedding_rule(ctx: Any, node: torch.fx.Node) -> Any:
    """An ``nn.Embedding`` lookup: the output's last axis is the module's channels; a column the mask zeroes is the
    constant 0. The indices are positions, not channels (kept). Any other use of ``embedding`` mixes channels."""
    path = _module_path(ctx, node.args[0], nn.Embedding)
    if path is None:
        return mixing_rule(ctx, node)
    path, module = ctx.module_of(node, node.args[0], nn.Embedding)
    for arg in node.args[1:]:
        state = ctx.state(arg)
        if isinstance(state, TensorState):
            ctx.uf.keep(state.ids)
    out_vars = ctx.vars(path, "out", module.embedding_dim)
    weight = ctx.weights(path)[0]
    zero = (weight == 0).all(0).cpu()
    const = torch.where(zero, torch.zeros(zero.shape, dtype=torch.float64), torch.full(zero.shape, NAN,
                                                                                       dtype=torch.float64))
    rank = len(ctx.shape(node))
    return TensorState(channel_view(out_vars, rank, -1), channel_view(const, rank, -1), ctx.shape(node))


def _module_path(ctx: Any, param_node: Any, kind: type) -> str | None:
    """The path of the ``kind`` module owning the parameter ``param_node``, or None."""
    name = ctx.captured.state_names.get(param_node.name) if isinstance(param_node, torch.fx.Node) else None
    if not name:
        return None
    path = name.rpartition(".")[0]
    try:
        module = ctx.captured.model.get_submodule(path)
    except AttributeError:
        return None
    return path if isinstance(module, kind) else None


@register_module(nn.LayerNorm)
def shrink_layer_norm(module: nn.LayerNorm, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      keep: dict[str, Any], folds: dict[int, float]) -> nn.Module:
    """The kept channels as a :func:`wide_class` copy of ``module`` (a plain copy with the masked weights when all
    are kept)."""
    size = module.normalized_shape[0]
    full = getattr(module, "full_size", size)
    idx = _index(keep.get("ch"), size)
    clone = _clone(module)
    if len(idx) != full:
        clone.__class__ = wide_class(type(module))
        clone.normalized_shape, clone.full_size = (len(idx),), full
    if module.weight is not None:
        clone.weight = _param(weight[idx], module.weight)
    if module.bias is not None:
        clone.bias = _param(bias[idx], module.bias)
    return clone


@register_module(nn.Embedding)
def shrink_embedding(module: nn.Embedding, weight: torch.Tensor, bias: torch.Tensor | None, keep: dict[str, Any],
                     folds: dict[int, float]) -> nn.Module:
    idx = _index(keep.get("out"), module.embedding_dim)
    clone = _clone(module)
    clone.embedding_dim = len(idx)
    clone.weight = _param(weight[:, idx], module.weight)
    return clone



def residual_changes(plan: Any) -> list[str]:
    """The modules of :data:`RESIDUAL_MODULES` that ``plan`` (a :class:`slimkit.speedup.analysis.Plan`) narrows."""
    return sorted({path for (path, _), keep in plan.keep.items()
                   if isinstance(plan.modules.get(path), RESIDUAL_MODULES) and not keep.all()})
