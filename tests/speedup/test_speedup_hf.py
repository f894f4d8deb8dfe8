"""Stage 2 on Hugging Face ``transformers`` models: dependency-aware L1 filter pruning at 50 % on every
Conv2d / Linear layer, then speedup; output equal to the masked model, fewer parameters. The exact figures
are the ones measured on the zoo (tests/hf_zoo.py): a change in what speedup removes shows here. The zoo's
BatchNorm statistics are measured, so a pruned filter would leave its BatchNorm as a nonzero constant: the pruner
masks each BatchNorm with the filters it follows, and the CNNs lose their pruned channels in full. The linear layers
writing a transformer's residual stream are one channel group; its embeddings, LayerNorm and RMSNorm layers are masked
with it, so BERT, DistilBERT, Swin, Llama and Qwen2 lose half their hidden size too (T5's and Whisper's stream is the
model's output: kept). Free parameters on the stream go with their channels: ViT's and DeiT's class / distillation
tokens and position table (masked with the stream), ConvNeXt's per-channel layer scale."""

from __future__ import annotations

import pytest
import torch

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.speedup import ModelSpeedup
from tests.hf_zoo import HF_ARCHS

# name -> (parameters after speedup, attention heads left in the first attention module or None)
EXPECTED = {
    "bert": 7426, "distilbert": 7394, "gpt2": 21344, "llama": 7856, "qwen2": 7920, "t5_encoder": 11584,
    "vit": 8026, "deit": 8058, "swin": 4157, "convnext": 5106, "resnet": 6226, "mobilenet_v2": 47818,
    "mobilevit": 37398, "efficientnet": 37264, "whisper_encoder": 13952,
}


def _masked_reference(model: torch.nn.Module, masks: dict, x: torch.Tensor) -> torch.Tensor:
    """The masked model's output, each mask applied where its layer uses the weight (tied weights apart)."""
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters(remove_duplicate=False))
    overrides = {}
    for name, entry in masks.items():
        if name not in modules:  # a free parameter ('<module>.<attribute>')
            overrides[name] = parameters[name] * torch.as_tensor(entry["weight"])
            continue
        for kind in ("weight", "bias"):
            if entry.get(kind) is not None:
                overrides[f"{name}.{kind}"] = getattr(modules[name], kind) * torch.as_tensor(entry[kind])
    with torch.no_grad():
        return torch.func.functional_call(model, overrides, (x,), tie_weights=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HF_ARCHS))
def test_stage2_structural_pruning_is_exact(name):
    model, x = HF_ARCHS[name]()
    before = sum(p.numel() for p in model.parameters())
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}], dependency_aware=True,
                            dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    expected = _masked_reference(model, masks, x)
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    with torch.no_grad():
        got = model(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    after = sum(p.numel() for p in model.parameters())
    assert report.params_after == after == EXPECTED[name]
    assert after < before


def test_gpt2_conv1d_projections_shrink():
    """Hugging Face's Conv1D (a linear layer with an (in, out) weight) loses output columns and input rows."""
    model, x = HF_ARCHS["gpt2"]()
    masks = {}
    for index in range(2):
        fc = model.model.transformer.h[index].mlp.c_fc
        keep = torch.zeros(fc.nf)
        keep[: 40 + index] = 1.0
        masks[f"model.transformer.h.{index}.mlp.c_fc"] = {"weight": keep.expand_as(fc.weight).clone(), "bias": keep}
    expected = _masked_reference(model, masks, x)
    ModelSpeedup(model, x, masks).speedup_model()
    mlp = [model.model.transformer.h[i].mlp for i in range(2)]
    assert [(m.c_fc.nx, m.c_fc.nf, tuple(m.c_fc.weight.shape), m.c_proj.nx) for m in mlp] == [
        (32, 40, (32, 40), 40), (32, 41, (32, 41), 41)]
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_llama_grouped_query_heads_and_attributes():
    model, x = HF_ARCHS["llama"]()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    expected = _masked_reference(model, masks, x)
    ModelSpeedup(model, x, masks).speedup_model()
    attention = model.model.model.layers[0].self_attn
    shapes = (attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features,
              attention.o_proj.in_features)
    assert shapes == (16, 8, 8, 16)  # 4 query heads -> 2, 2 key / value heads -> 1, head_dim 8
    assert attention.num_key_value_groups == 2
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_gpt2_fused_qkv_loses_whole_heads():
    """GPT-2 projects query, key and value with one Conv1D and splits it by ``self.split_size``: the three parts
    lose the same heads, and ``split_size`` / ``num_heads`` follow."""
    model, x = HF_ARCHS["gpt2"]()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    kept = masks["model.transformer.h.0.attn.c_attn"]["bias"].reshape(3, 4, 8)[..., 0]  # (q / k / v, head)
    assert torch.equal(kept[0], kept[1]) and torch.equal(kept[0], kept[2]) and int(kept[0].sum()) == 2
    expected = _masked_reference(model, masks, x)
    ModelSpeedup(model, x, masks).speedup_model()
    attention = model.model.transformer.h[0].attn
    assert (tuple(attention.c_attn.weight.shape), attention.split_size, attention.num_heads) == ((32, 48), 16, 2)
    assert tuple(attention.c_proj.weight.shape) == (16, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_whisper_heads_go_though_its_view_names_num_heads():
    """Whisper views keys and values as ``(batch, -1, self.num_heads, head_dim)``: the head axis may shrink because
    speedup updates ``num_heads``."""
    model, x = HF_ARCHS["whisper_encoder"]()
    config = [{"sparsity": 0.5, "op_types": ["Linear"]}]
    with pytest.warns(UserWarning, match="coupled with .*'model.conv2'"):  # the residual stream is not pruned
        pruner = L1FilterPruner(model, config, dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    expected = _masked_reference(model, masks, x)
    ModelSpeedup(model, x, masks).speedup_model()
    attention = model.model.layers[0].self_attn
    assert (attention.k_proj.out_features, attention.out_proj.in_features, attention.num_heads) == (16, 16, 2)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_swin_heads_take_their_relative_position_bias_column():
    """Swin adds a per-head bias read from ``relative_position_bias_table[index]`` (positions x heads): a removed
    head's column goes with it."""
    model, x = HF_ARCHS["swin"]()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}], dependency_aware=True,
                            dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    expected = _masked_reference(model, masks, x)
    ModelSpeedup(model, x, masks).speedup_model()
    attention = model.model.swin.encoder.layers[0].blocks[0].attention
    table = attention.relative_position_bias.relative_position_bias_table
    assert (attention.num_attention_heads, tuple(table.shape), attention.q_proj.out_features) == (1, (49, 1), 8)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_t5_heads_take_their_position_bias_embedding_column():
    """T5's relative-position bias is an ``nn.Embedding`` (buckets x heads) computed in the first layer and reused
    by the second: both layers lose the same heads, and the embedding loses their columns."""
    model, x = HF_ARCHS["t5_encoder"]()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    expected = _masked_reference(model, masks, x)
    ModelSpeedup(model, x, masks).speedup_model()
    blocks = [block.layer[0].SelfAttention for block in model.model.encoder.block]
    assert [(a.n_heads, a.q.out_features, a.o.in_features) for a in blocks] == [(2, 16, 16), (2, 16, 16)]
    assert blocks[0].relative_attention_bias.embedding_dim == 2
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)
