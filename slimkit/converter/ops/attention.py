"""Scaled dot-product attention: BATCH_MATMUL, SOFTMAX and the mask as PyTorch applies it.

A float mask is added to the scores; a boolean mask (and ``is_causal``) keeps the scores where it is True and
sets the others to the lowest float, so they get zero weight (a constant one by adding 0 or the lowest float, an
ADD XNNPACK runs, where SELECT_V2 split its graph); rows the mask empties entirely are zero, as PyTorch returns
them. ``enable_gqa`` repeats each key / value head for its group of query heads.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from slimkit.converter.ir import Tensor
from slimkit.converter.ops.elementwise import binary, broadcast_inputs
from slimkit.converter.ops.linear import batch_matmul
from slimkit.converter.ops.norm import along_last
from slimkit.converter.ops.shape import reshape_to
from slimkit.converter.registry import register

_LOWEST = float(np.finfo(np.float32).min)


def _select(ctx, mask, x, y) -> Tensor:
    """``where(mask, x, y)`` with broadcasting (``mask`` a boolean activation or a numpy array)."""
    (c, a, b), order = broadcast_inputs(ctx, [mask, x, y], tuple(x.shape))
    if c.is_const:
        c = ctx.const(c.data.astype(np.bool_))
    out = ctx.tensor(tuple(x.shape), x.dtype, perm=order)
    ctx.emit("SELECT_V2", [c, a, b], [out])
    return out


def _repeat_heads(ctx, t: Tensor, groups: int) -> Tensor:
    """``(..., Hk, S, D)`` -> ``(..., Hk * groups, S, D)``, each head repeated ``groups`` times in a row."""
    if groups == 1:
        return t
    *lead, heads, s, d = t.shape
    t = reshape_to(ctx, t, (*lead, heads, 1, s, d))
    wide = (*lead, heads, groups, s, d)
    out = ctx.tensor(wide, t.dtype, perm=t.perm)
    ctx.emit("BROADCAST_TO", [t, ctx.const(np.array([wide[i] for i in t.order], np.int32))], [out])
    return reshape_to(ctx, out, (*lead, heads * groups, s, d))


def _boolean_mask(ctx, a, length: int, source: int):
    """The boolean mask of the call (a tensor, a numpy array for constants and ``is_causal``) or None."""
    mask = a["attn_mask"]
    if a["is_causal"]:
        return np.tril(np.ones((length, source), np.bool_))
    if isinstance(mask, Tensor):
        return mask if mask.dtype == "bool" else None
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        return mask.detach().cpu().numpy()
    return None


@register("aten.scaled_dot_product_attention.default", emits=("BATCH_MATMUL", "MUL", "ADD", "SELECT_V2", "SOFTMAX",
                                                               "BROADCAST_TO", "RESHAPE"))
def sdpa(ctx, node, a):
    q, k, v = a["query"], a["key"], a["value"]
    if a["dropout_p"]:
        ctx.fail(f"attention dropout (dropout_p={a['dropout_p']}) is random; call model.eval() first")
    if a["enable_gqa"]:
        groups = q.shape[-3] // k.shape[-3]
        k, v = _repeat_heads(ctx, k, groups), _repeat_heads(ctx, v, groups)
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    length, source = q.shape[-2], k.shape[-2]
    s = batch_matmul(ctx, q, k, tuple(q.shape[:-1]) + (source,), adj_y=True)
    s = binary(ctx, "MUL", s, float(scale), FusedActivationFunction=0)
    keep = _boolean_mask(ctx, a, length, source)
    if isinstance(keep, np.ndarray):  # a constant mask (is_causal): adding 0 or the lowest float gives the same
        s = binary(ctx, "ADD", s, torch.from_numpy(np.where(keep, 0.0, _LOWEST).astype(np.float32)),  # scores as a
                   FusedActivationFunction=0)  # SELECT_V2, and XNNPACK takes the ADD (no SELECT_V2)
    elif keep is not None:
        s = _select(ctx, keep, s, _LOWEST)
    elif a["attn_mask"] is not None:
        s = binary(ctx, "ADD", s, a["attn_mask"], FusedActivationFunction=0)
    s = along_last(ctx, s, -1)
    p = ctx.tensor(s.shape, perm=s.perm)
    ctx.emit("SOFTMAX", [s], [p], Beta=1.0)
    if keep is not None and not (isinstance(keep, np.ndarray) and keep.any(-1).all()):
        p = _select(ctx, keep, p, 0.0)  # rows with no key kept: PyTorch's softmax gives zeros there
    return batch_matmul(ctx, p, v, tuple(node.meta["val"].shape))
