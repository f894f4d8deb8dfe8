"""Analysis rule for attention: whole heads are channels of ``scaled_dot_product_attention``.

Head ``h`` of the output reads only head ``h`` of the query, its key / value head (``h // group`` under
grouped-query attention, whether the model repeats the key / value heads itself or passes
``enable_gqa``) and head ``h`` of a per-head mask. So one variable per output head is coupled with
those heads, and a head goes as a unit: its query, key and value projections' rows and the output
projection's columns. The output of a head is constant where its values are (a softmax-weighted
average of a zero head is zero), which is what lets the output projection drop it.

Head dimensions stay whole: ``view(b, n, -1, head_dim)`` in the model's code ties them (see
:func:`slimkit.speedup.ops.reshape_rule`); where they are not tied, every head is kept.

Example:

>>> import torch
>>> from slimkit.speedup import ModelSpeedup
>>> from slimkit.models.zoo import GQAttention
>>> model = GQAttention(dim=8, heads=4, kv_heads=2).eval()
>>> x = torch.randn(1, 5, 8)
>>> keep = torch.tensor([0.0, 1.0]).repeat_interleave(2)  # drop the first key / value head
>>> masks = {'v': {'weight': keep[:, None].expand(4, 8).clone(), 'bias': keep.clone()}}
>>> speedup = ModelSpeedup(model, x, masks)
>>> model = speedup.speedup_model()
>>> report = speedup.report
>>> model.q.out_features, model.k.out_features, model.v.out_features, model.o.in_features
(4, 2, 2, 4)
>>> model.num_heads, model.num_key_value_heads  # head counts the model's code may read
(2, 1)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.speedup.ops import mixing_rule
from slimkit.speedup.registry import register_module, register_op
from slimkit.speedup.state import TensorState, channel_vector
from slimkit.speedup.surgery import _clone, _index, _param

NAN = float("nan")


def _heads(ctx: Any, arg: Any, count: int) -> torch.Tensor | None:
    """One variable per head (axis -3) of ``arg``, repeated to ``count`` query heads; None when the
    variables also vary inside a head."""
    state = ctx.state(arg)
    if state is None or len(state.shape) < 3:
        return None
    rank = len(state.shape)
    if state.shape[-3] == 1:  # shared by every head (a causal mask): couples nothing
        return torch.full((count,), -1, dtype=torch.long)
    vector = channel_vector(state.ids, rank - 3, state.shape[-3])
    if vector is None or count % len(vector):
        return None
    return vector.repeat_interleave(count // len(vector))


def _head_constants(state: TensorState) -> torch.Tensor:
    """Per head of the values: its constant when the head holds one value at every position (else NaN)."""
    const = state.const
    rank = const.dim()
    others = [d for d in range(rank) if d != rank - 3 and const.shape[d] > 1]
    heads = state.shape[-3]
    if others or rank < 3:
        return torch.full((heads,), NAN, dtype=torch.float64)
    return const.reshape(-1).expand(heads).clone() if const.numel() == 1 else const.reshape(-1).clone()


@register_op("aten::scaled_dot_product_attention")
def attention_rule(ctx: Any, node: torch.fx.Node) -> Any:
    query, key, value = node.args[:3]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    shape = ctx.shape(node)
    count = shape[-3] if len(shape) >= 3 else 0
    vectors = [_heads(ctx, arg, count) for arg in (query, key, value)]
    if mask is not None:
        vectors.append(_heads(ctx, mask, count))
    if count == 0 or any(v is None for v in vectors):
        return mixing_rule(ctx, node)
    out = vectors[0]
    for vector in vectors[1:]:
        ctx.uf.union_arrays(out, vector)
        out = torch.where(out < 0, vector, out)
    ctx.heads.setdefault(ctx.captured.module_path(node), []).append((vectors[0].clone(), shape[-1]))
    const = _head_constants(ctx.state(value)).repeat_interleave(count // ctx.state(value).shape[-3])
    view = [1] * len(shape)
    view[-3] = count
    return TensorState(out.reshape(view), const.reshape(view), shape)


# Parameters that hold one column per attention head, read by indexing their rows (a relative-position bias
# table, ``table[index]``), and the modules owning them: speedup drops the columns of removed heads. Register more
# with ``PER_HEAD_TABLES.append(name)`` and ``register_module('<qualified class name>')(shrink_head_table)``.
PER_HEAD_TABLES = ["relative_position_bias_table"]
HEAD_TABLE_MODULES = ("transformers.models.swin.modeling_swin.SwinRelativePositionBias",)


@register_op("aten::index")
def index_rule(ctx: Any, node: torch.fx.Node) -> Any:
    """``table[index]`` on a per-head table (:data:`PER_HEAD_TABLES`): the rows are positions, the columns heads,
    one channel variable each; any other indexing mixes channels."""
    table, indices = node.args[0], node.args[1]
    name = ctx.captured.state_names.get(getattr(table, "name", None), "")
    path, _, attribute = name.rpartition(".")
    if attribute not in PER_HEAD_TABLES or len(indices) != 1 or ctx.state(table) is None:
        return mixing_rule(ctx, node)
    ctx.modules[path] = ctx.captured.model.get_submodule(path)
    ctx.uf.keep(ctx.state(indices[0]).ids)
    heads = ctx.vars(path, "table", ctx.state(table).shape[-1])
    shape = ctx.shape(node)
    view = [1] * len(shape)
    view[-1] = len(heads)
    return TensorState(heads.reshape(view), torch.full(view, NAN, dtype=torch.float64), shape)


@register_module(*HEAD_TABLE_MODULES)
def shrink_head_table(module: nn.Module, weight: Any, bias: Any, keep: dict[str, Any], folds: dict) -> nn.Module:
    """The module with the columns of its :data:`PER_HEAD_TABLES` parameters kept for the kept heads."""
    clone = _clone(module)
    for name in PER_HEAD_TABLES:
        table = module._parameters.get(name)
        if table is not None:
            clone._parameters[name] = _param(table[:, _index(keep["table"], table.shape[-1])], table)
    return clone


# Attributes of an attention module that hold its head counts, and which count: Hugging Face modules keep
# them for code that reshapes with them (``num_heads``, ``all_head_size``, ...). Updated where they hold the
# count before speedup. Register more with ``HEAD_ATTRIBUTES[name] = kind``.
HEAD_ATTRIBUTES: dict[str, str] = {
    "num_heads": "query", "num_attention_heads": "query", "n_heads": "query", "n_head": "query",
    "num_key_value_heads": "key_value", "all_head_size": "width", "inner_dim": "width",
}


def head_attributes(heads: dict[str, list[tuple[torch.Tensor, int]]], uf: Any, snapshot: np.ndarray,
                    model: nn.Module) -> dict[str, dict[str, int]]:
    """New values of :data:`HEAD_ATTRIBUTES` for every module that calls attention once with head pruning."""
    changes = {}
    for path, calls in heads.items():
        if len(calls) != 1:
            continue
        variables, head_dim = calls[0]
        kept = uf.kept(variables, snapshot) | (variables < 0).numpy()
        roots = uf.roots(variables)
        before = {"query": len(variables), "key_value": len(np.unique(roots)), "width": len(variables) * head_dim}
        after = {"query": int(kept.sum()), "key_value": len(np.unique(roots[kept])),
                 "width": int(kept.sum()) * head_dim}
        module = model.get_submodule(path)
        found = {name: after[kind] for name, kind in HEAD_ATTRIBUTES.items()
                 if getattr(module, name, None) == before[kind] and after[kind] != before[kind]}
        if found:
            changes[path] = found
    return changes
