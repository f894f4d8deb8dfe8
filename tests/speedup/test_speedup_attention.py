"""Attention heads as speedup units: exact shapes, grouped-query attention, head-count attributes."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.models.zoo import GQAttention
from slimkit.speedup import ModelSpeedup
from slimkit.speedup.dependency import channel_groups
from tests.speedup.helpers_speedup import masked_copy


def _rows(module: nn.Linear, keep: list[float]) -> dict:
    keep = torch.tensor(keep)
    return {"weight": keep[:, None].expand_as(module.weight).clone(), "bias": keep.clone()}


def _speedup(model: nn.Module, x: torch.Tensor, masks: dict) -> None:
    reference = masked_copy(model, masks)
    ModelSpeedup(model, x, masks).speedup_model()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_grouped_query_head_goes_with_its_query_heads():
    torch.manual_seed(0)
    model = GQAttention(dim=16, heads=4, kv_heads=2).eval()  # head_dim 4, query heads 0,1 read kv head 0
    x = torch.randn(2, 5, 16)
    _speedup(model, x, {"v": _rows(model.v, [1.0] * 4 + [0.0] * 4)})  # kv head 1 pruned
    assert (model.q.out_features, model.k.out_features, model.v.out_features, model.o.in_features) == (8, 4, 4, 8)
    assert (model.num_heads, model.num_key_value_heads) == (2, 1)


def test_multi_head_attention_drops_each_pruned_head():
    torch.manual_seed(0)
    model = GQAttention(dim=16, heads=4, kv_heads=4).eval()
    x = torch.randn(2, 5, 16)
    keep = [0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4  # heads 1 and 3 stay
    masks = {name: _rows(getattr(model, name), keep) for name in ("q", "k", "v")}
    kept_q = model.q.weight[4:8].clone()
    _speedup(model, x, masks)
    assert (model.q.out_features, model.v.out_features, model.o.in_features) == (8, 8, 8)
    assert torch.equal(model.q.weight[:4], kept_q)
    assert (model.num_heads, model.num_key_value_heads) == (2, 2)


def test_a_head_whose_values_live_is_kept():
    """Zero queries give uniform attention over live values: the head's output is not zero, so it stays."""
    torch.manual_seed(0)
    model = GQAttention(dim=16, heads=4, kv_heads=4).eval()
    x = torch.randn(2, 5, 16)
    _speedup(model, x, {"q": _rows(model.q, [0.0] * 4 + [1.0] * 12)})
    assert (model.q.out_features, model.o.in_features, model.num_heads) == (16, 16, 4)


class HeadBias(nn.Module):
    """Attention with a learned per-head additive bias (T5 / Swin relative positions): heads are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = GQAttention(dim=8, heads=2, kv_heads=2)
        self.bias = nn.Parameter(torch.randn(1, 2, 3, 3))

    def forward(self, x):
        inner = self.inner
        shape = (*x.shape[:-1], -1, inner.head_dim)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (inner.q, inner.k, inner.v))
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return inner.o(out.transpose(1, 2).reshape(*x.shape[:-1], -1))


def test_per_head_mask_keeps_heads():
    torch.manual_seed(0)
    model = HeadBias().eval()
    x = torch.randn(1, 3, 8)
    _speedup(model, x, {"inner.v": _rows(model.inner.v, [0.0] * 4 + [1.0] * 4)})
    assert (model.inner.v.out_features, model.inner.o.in_features) == (8, 8)


def test_dependency_aware_filter_pruner_prunes_whole_head_groups():
    torch.manual_seed(0)
    model = nn.Sequential(GQAttention(dim=16, heads=4, kv_heads=2), nn.Linear(16, 8)).eval()
    x = torch.randn(2, 5, 16)
    groups = channel_groups(model, x)
    head_group = next(g for g in groups if "0.q" in g.members)
    assert head_group.members == ["0.q", "0.k", "0.v"]
    units = head_group.units
    assert len(np.unique(units["0.q"])) == 2 and np.array_equal(np.unique(units["0.q"]), np.unique(units["0.v"]))
    config = [{"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_names": ["0.o", "1"]}]
    pruner = L1FilterPruner(model, config, dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    q_rows = masks["0.q"]["weight"][:, 0].reshape(2, 8)  # two kv groups of 2 query heads x 4 dims
    v_rows = masks["0.v"]["weight"][:, 0].reshape(2, 4)
    assert sorted(q_rows.sum(1).tolist()) == [0.0, 8.0] and sorted(v_rows.sum(1).tolist()) == [0.0, 4.0]
    assert np.array_equal(q_rows[:, 0], v_rows[:, 0])
    _speedup(model, x, masks)
    assert (model[0].q.out_features, model[0].k.out_features, model[0].o.in_features) == (8, 4, 8)
    assert (model[0].num_heads, model[0].num_key_value_heads) == (2, 1)


class Shuffle(nn.Module):
    """A channel split with ``-1`` as the group count: whole groups of the fixed size go."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head((y.view(y.shape[0], -1, 2, *y.shape[2:]) * 2).flatten(1, 2))


def test_reshape_minus_one_factor_shrinks_and_fixed_factor_is_tied():
    torch.manual_seed(0)
    model = Shuffle().eval()
    x = torch.randn(1, 3, 4, 4)
    keep = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])  # group 1 (channels 2, 3) pruned whole
    masks = {"conv": {"weight": keep.view(8, 1, 1, 1).expand(8, 3, 1, 1).clone(), "bias": keep.clone()}}
    _speedup(model, x, masks)
    assert (model.conv.out_channels, model.head.in_channels) == (6, 6)  # channel 6 alone is zero: its pair lives
