"""Hidden-size pruning: the residual stream's channels go as one group (the linear layers writing it, its
embeddings and LayerNorm layers), and the sped-up model equals the masked one."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.models.zoo import build
from slimkit.speedup import ModelSpeedup
from slimkit.speedup.residual import WideLayerNorm


class TinyEncoder(nn.Module):
    """Token and position embeddings, a LayerNorm, two post-norm MLP blocks, a head on the first token."""

    def __init__(self, vocab: int = 20, hidden: int = 8, inner: int = 12):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(6, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.ModuleList([nn.Linear(hidden, inner) for _ in range(2)])
        self.fc2 = nn.ModuleList([nn.Linear(inner, hidden) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(2)])
        self.head = nn.Linear(hidden, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.tokens(ids) + self.positions(torch.arange(ids.shape[1])))
        for fc1, fc2, norm in zip(self.fc1, self.fc2, self.norms):
            x = norm(x + fc2(F.gelu(fc1(x))))
        return self.head(x[:, 0])


def encoder() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model, torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(1))


def test_wide_layer_norm_is_the_layer_norm_of_the_zero_padded_input():
    wide = nn.LayerNorm(10, eps=1e-3)
    with torch.no_grad():
        wide.weight.uniform_(0.5, 1.5)
        wide.bias.uniform_(-1, 1)
    kept = torch.tensor([0, 2, 3, 7, 9])
    narrow = WideLayerNorm(5, 10, eps=1e-3)
    with torch.no_grad():
        narrow.weight.copy_(wide.weight[kept])
        narrow.bias.copy_(wide.bias[kept])
    for seed in range(3):
        x = torch.zeros(4, 3, 10, dtype=torch.float64)
        x[..., kept] = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + seed
        expected = wide.double()(x)[..., kept]
        assert torch.allclose(narrow.double()(x[..., kept]), expected, rtol=0, atol=1e-12)


def test_the_residual_stream_is_pruned_as_one_group():
    model, ids = encoder()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], dependency_aware=True,
                            dummy_input=ids)
    assert ["fc2.0", "fc2.1"] in [group.members for group in pruner.channel_groups]
    assert [layer.name for layer in pruner.followers] == ["tokens", "positions", "norm", "norms.0", "norms.1"]
    pruner.compress()
    masks = pruner.get_masks()
    keep = masks["fc2.0"]["bias"]
    assert int(keep.sum()) == 4 and torch.equal(masks["fc2.1"]["bias"], keep)
    for name in ("tokens", "positions"):  # embedding columns
        assert torch.equal(masks[name]["weight"], keep.expand(masks[name]["weight"].shape[0], 8)), name
        assert masks[name]["bias"] is None
    for name in ("norm", "norms.0", "norms.1"):
        assert torch.equal(masks[name]["weight"], keep) and torch.equal(masks[name]["bias"], keep), name
    with torch.no_grad():
        masked = model(ids)
    pruner.unwrap_model()
    speedup = ModelSpeedup(model, ids, masks)
    speedup.speedup_model()
    report = speedup.report
    assert model.tokens.embedding_dim == model.positions.embedding_dim == 4
    assert all(isinstance(norm, WideLayerNorm) and norm.normalized_shape == (4,) and norm.full_size == 8
               for norm in (model.norm, *model.norms))
    assert [(fc.in_features, fc.out_features) for fc in (*model.fc1, *model.fc2, model.head)] == [
        (4, 6), (4, 6), (6, 4), (6, 4), (4, 3)]
    assert (report.params_before, report.params_after) == (707, 259)
    assert {change.name: (change.out_before, change.out_after) for change in report.layers}["norms.1"] == (8, 4)
    with torch.no_grad():
        assert torch.allclose(model(ids), masked, rtol=1e-5, atol=1e-6)
        other = torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(2))
        reference, _ = encoder()
        overrides = {f"{name}.{kind}": getattr(reference.get_submodule(name), kind) * entry[kind]
                     for name, entry in masks.items() for kind in ("weight", "bias") if entry[kind] is not None}
        assert torch.allclose(model(other), torch.func.functional_call(reference, overrides, (other,)),
                              rtol=1e-5, atol=1e-6)


def test_a_live_channel_keeps_the_layer_norm_whole():
    """Only the linear layers' rows masked (no embedding / norm masks): the stream's channels are live after the
    embeddings, so every LayerNorm keeps all of them."""
    model, ids = encoder()
    keep = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])
    masks = {f"fc2.{i}": {"weight": keep[:, None].expand(8, 12).clone(), "bias": keep} for i in range(2)}
    ModelSpeedup(model, ids, masks).speedup_model()
    assert type(model.norm) is nn.LayerNorm and model.fc2[0].out_features == 8


def test_a_model_reading_the_hidden_size_keeps_it():
    """The zoo's transformer computes its head size from ``x.shape``: narrowing the stream breaks its reshape, so
    speedup keeps the hidden size (the masked channels stay as zeros) and says why."""
    model, x = build("transformer")
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    with torch.no_grad():
        masked = model(x)
    pruner.unwrap_model()
    with pytest.warns(UserWarning, match=r"Speedup keeps the hidden size: .*\['norm1', 'norm2'\] narrowed"):
        speedup = ModelSpeedup(model, x, masks)
        speedup.speedup_model()
        report = speedup.report
    assert report.params_after == 2074 and model.norm1.normalized_shape == (16,) and model.fc1.out_features == 16
    with torch.no_grad():
        assert torch.allclose(model(x), masked, rtol=1e-5, atol=1e-6)


class ChannelsFirstNorm(torch.nn.LayerNorm):
    """A LayerNorm subclass that permutes around ``super().forward`` (Hugging Face's ``ConvNextLayerNorm``)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_narrowed_layer_norm_subclass_keeps_its_forward_and_pickles():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), ChannelsFirstNorm(6), torch.nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(1, 3, 4, 6)  # a width of 6: the wrong axis would normalise without an error
    keep = torch.tensor([1.0, 0, 1, 1, 0, 1])
    masks = {"0": {"weight": keep.view(6, 1, 1, 1).expand(6, 3, 1, 1).clone(), "bias": keep},
             "1": {"weight": keep.clone(), "bias": keep.clone()}}
    with torch.no_grad():
        overrides = {"0.weight": model[0].weight * masks["0"]["weight"], "0.bias": model[0].bias * keep,
                     "1.weight": model[1].weight * keep, "1.bias": model[1].bias * keep}
        expected = torch.func.functional_call(model, overrides, (x,))
    ModelSpeedup(model, x, masks).speedup_model()
    norm = model[1]
    assert isinstance(norm, ChannelsFirstNorm) and isinstance(norm, WideLayerNorm)
    assert (norm.normalized_shape, norm.full_size, type(norm).__name__) == ((4,), 6, "WideChannelsFirstNorm")
    copy = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(copy(x), model(x))
