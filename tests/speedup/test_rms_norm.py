"""RMSNorm written as separate ops: recognised by what it computes (any class name), the hidden size pruned through
it exactly (:class:`WideRMSNorm` divides by the full width, as the masked model does); a norm that computes
something else keeps its channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.speedup import ModelSpeedup
from slimkit.speedup.rms_norm import WideRMSNorm, rms_norm_eps
from tests.hf_zoo import HF_ARCHS
from tests.speedup.test_free_parameters import masked_reference


class Normalizer(nn.Module):
    """An RMSNorm under another name, written as Hugging Face writes it."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)
        self.variance_epsilon = eps

    def forward(self, x):
        hidden = x.to(torch.float32)
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden.to(x.dtype)


class OffsetNormalizer(Normalizer):
    """Gemma's form, ``(1 + weight)``: not the RMSNorm :class:`WideRMSNorm` computes."""

    def forward(self, x):
        hidden = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (1.0 + self.weight) * hidden


class Decoder(nn.Module):
    def __init__(self, norm: type):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.norm1, self.norm2 = norm(8), norm(8)
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.down(torch.relu(self.up(self.norm1(x))))
        return self.head(self.norm2(x))


CONFIG = [{"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_names": ["head"]}]


def prune(norm: type) -> tuple[nn.Module, torch.Tensor, dict, torch.Tensor]:
    torch.manual_seed(0)
    model, ids = Decoder(norm).eval(), torch.randint(0, 20, (2, 6))
    pruner = L1FilterPruner(model, CONFIG, dependency_aware=True, dummy_input=ids)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    return model, ids, masks, masked_reference(model, masks, ids)


def test_recognised_by_what_it_computes():
    assert rms_norm_eps(Normalizer(8, eps=1e-5)) == 1e-5
    assert rms_norm_eps(OffsetNormalizer(8)) is None
    assert rms_norm_eps(nn.LayerNorm(8)) is None


def test_hidden_size_through_an_rms_norm_of_any_name():
    model, ids, masks, expected = prune(Normalizer)
    assert torch.equal(masks["norm1"]["weight"], masks["down"]["bias"])  # masked with the stream
    ModelSpeedup(model, ids, masks).speedup_model()
    assert [type(m).__name__ for m in (model.norm1, model.norm2)] == ["WideRMSNorm", "WideRMSNorm"]
    assert (model.norm1.weight.shape[0], model.norm1.full_size, model.embed.embedding_dim) == (4, 8, 4)
    assert sum(p.numel() for p in model.parameters()) == 189  # 501 before
    with torch.no_grad():
        assert torch.allclose(model(ids), expected, rtol=1e-5, atol=1e-6)


def test_another_norm_keeps_the_hidden_size():
    model, ids, masks, expected = prune(OffsetNormalizer)
    ModelSpeedup(model, ids, masks).speedup_model()
    assert (type(model.norm1), model.embed.embedding_dim, model.up.in_features) == (OffsetNormalizer, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(ids), expected, rtol=1e-5, atol=1e-6)


def test_wide_rms_norm_equals_the_full_one_on_zero_channels():
    norm = Normalizer(6)
    x = torch.randn(3, 6)
    x[:, [1, 4]] = 0
    kept = [0, 2, 3, 5]
    wide = WideRMSNorm(norm.weight.detach()[kept], full_size=6, eps=norm.variance_epsilon)
    assert torch.allclose(wide(x[:, kept]), norm(x)[:, kept], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_hugging_face_decoders_lose_half_their_hidden_size(name):
    model, x = HF_ARCHS[name]()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    expected = masked_reference(model, masks, x)
    ModelSpeedup(model, x, masks).speedup_model()
    inner = model.model.model
    norms = [inner.norm] + [norm for layer in inner.layers
                            for norm in (layer.input_layernorm, layer.post_attention_layernorm)]
    assert [(type(n).__name__, n.weight.shape[0], n.full_size) for n in norms] == [("WideRMSNorm", 16, 32)] * 5
    assert (inner.embed_tokens.embedding_dim, model.model.lm_head.in_features) == (16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_t5_layer_norm_under_a_head():
    """T5's encoder returns its residual stream (kept as the model's output); under a head the stream is internal,
    and its hidden size goes through every ``T5LayerNorm``."""
    encoder, x = HF_ARCHS["t5_encoder"]()
    torch.manual_seed(0)
    model = nn.Sequential(encoder, nn.Linear(32, 3)).eval()
    config = [{"sparsity": 0.5, "op_types": ["Linear"]}, {"exclude": True, "op_names": ["1"]}]
    pruner = L1FilterPruner(model, config, dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    expected = masked_reference(model, masks, x)
    ModelSpeedup(model, x, masks).speedup_model()
    stack = model[0].model.encoder
    norms = [stack.final_layer_norm] + [layer.layer_norm for block in stack.block for layer in block.layer]
    assert [(type(n).__name__, n.weight.shape[0], n.full_size) for n in norms] == [("WideRMSNorm", 16, 32)] * 5
    assert (stack.embed_tokens.embedding_dim, model[1].in_features) == (16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)
