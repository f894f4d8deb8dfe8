"""Float islands of int8 files (LayerNorm, RMSNorm, attention, SiLU, LSTM) are named per layer by the converter and by
``verify()``, which then says the result is measured, not guaranteed; a pure int8 CNN names none."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from slimkit.converter import TFLiteConverter, verify
from slimkit.converter.float_islands import float_islands
from slimkit.converter.ir import Graph, Op, Tensor
from tests.converter.test_int8 import quantize, settle_bn


class TransformerBlock(nn.Module):
    """Pre-norm block: ``nn.LayerNorm``, ``F.scaled_dot_product_attention`` called in the block's own forward,
    ``nn.GELU`` MLP, residuals."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class LlamaBlock(nn.Module):
    """A Hugging Face ``LlamaDecoderLayer`` (RMSNorm written as pow / mean / rsqrt / mul, rotary embeddings, SDPA with
    grouped keys, SiLU MLP) from a small random config, then the model's final RMSNorm."""

    def __init__(self):
        super().__init__()
        llama = transformers.models.llama.modeling_llama
        config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, vocab_size=32,
                                          use_cache=False, attn_implementation="sdpa")
        self.layer = llama.LlamaDecoderLayer(config, 0)
        self.rotary = llama.LlamaRotaryEmbedding(config)
        self.norm = llama.LlamaRMSNorm(16)

    def forward(self, x):
        cos, sin = self.rotary(x, torch.arange(x.shape[1]).unsqueeze(0))
        return self.norm(self.layer(x, attention_mask=None, position_embeddings=(cos, sin)))


class LSTMHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


class GRUHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.GRU(8, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.rnn(x)[0].mean(1))


def _converted(model, shape, tmp_path):
    """``model`` PTQ-quantized whole-graph and converted; returns (model, example, path, the converter's warnings)."""
    torch.manual_seed(0)
    model, x = quantize(model.eval(), shape)
    path = tmp_path / "m.tflite"
    with pytest.warns(UserWarning) as caught:
        TFLiteConverter(model, x, path).convert()
    return model, x, path, [str(w.message) for w in caught if "float32 between DEQUANTIZE" in str(w.message)]


CASES = {
    "transformer": (TransformerBlock, (6, 16), (
        "norm1 (LayerNorm, float: layer_norm)",
        "<root> (TransformerBlock, float: scaled_dot_product_attention)",
        "norm2 (LayerNorm, float: layer_norm)")),
    "llama": (LlamaBlock, (6, 16), (
        "layer.input_layernorm (LlamaRMSNorm, float: rsqrt)",
        "layer.self_attn (LlamaAttention, float: scaled_dot_product_attention)",
        "layer.post_attention_layernorm (LlamaRMSNorm, float: rsqrt)",
        "layer.mlp.act_fn (SiLUActivation, float: silu)",
        "norm (LlamaRMSNorm, float: rsqrt)")),
    "lstm": (LSTMHead, (5, 8), ("rnn (LSTM, float: lstm)",)),
    "gru": (GRUHead, (5, 8), ("rnn (GRU, float: gru)", "<root> (GRUHead, float: mean)")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_verify_and_the_converter_name_every_float_island(name, tmp_path):
    """Each layer the int8 file computes in float is named with its module path and class; the rotary embedding's
    MUL / NEG (correctly rounded on both sides) are not. verify() says the outputs are measured, not guaranteed."""
    factory, shape, islands = CASES[name]
    model, x, path, warned = _converted(factory(), shape, tmp_path)
    assert len(warned) == 1 and all(island in warned[0] for island in islands), warned
    result = verify(model, x, path)
    assert result.float_layers == islands
    assert result.max_steps == 0.0  # on these inputs the file and the emulation agree
    text = result.describe()
    assert "emulated exactly" not in text
    assert f"{'; '.join(islands)} run in float32 in the file" in text
    assert text.endswith("so its outputs are within 0 steps of the file on these inputs, not guaranteed equal.")


def test_a_pure_int8_cnn_names_no_float_island(tmp_path):
    model = settle_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(8, 8, 3, groups=8), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(8, 5)), (3, 8, 8))
    model, x = quantize(model, (3, 8, 8))
    path = tmp_path / "cnn.tflite"
    converter = TFLiteConverter(model, x, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converter.convert()
    assert converter.float_islands() == []
    assert not [w for w in caught if "float32 between DEQUANTIZE" in str(w.message)]
    result = verify(model, x, path)
    assert result.float_layers == () and result.approximate_layers == () and result.max_steps == 0.0
    assert result.describe().endswith("; every int8 op of the file is emulated exactly.")


def _graph(*ops: tuple[str, str, str], integer: bool = True) -> Graph:
    """A chain DEQUANTIZE -> ``ops`` (code, module path, PyTorch function) on float tensors."""
    x = Tensor("q", (1, 4), "int8") if integer else Tensor("w", (1, 4), "int8", data=np.zeros((1, 4), np.int8))
    chain = [Op("DEQUANTIZE", [x], [Tensor("t0", (1, 4))])]
    for i, (code, source, origin) in enumerate(ops):
        chain.append(Op(code, [chain[-1].outputs[0]], [Tensor(f"t{i + 1}", (1, 4))], source=source, origin=origin))
    return Graph(ops=chain)


def test_only_ops_that_round_as_pytorch_does_are_left_unnamed():
    """Correctly rounded ops of the same PyTorch function are exact; a division by a constant (written as a MUL by
    its reciprocal), a reduction or an approximated function is named; a file with int8 weights only has no island."""
    exact = _graph(("MUL", "attn", "mul"), ("NEG", "attn", "neg"), ("CONCATENATION", "attn", "cat"),
                   ("ADD", "attn", "add"), ("RESHAPE", "attn", "view"))
    assert float_islands(exact) == []
    named = _graph(("MUL", "scale", "div"), ("MEAN", "pool", "mean"), ("LOGISTIC", "gate", "sigmoid"),
                   ("TANH", "gate", "tanh"), ("MUL", "mix", "mul"))
    assert float_islands(named) == ["scale (float: div)", "pool (float: mean)", "gate (float: sigmoid, tanh)"]
    assert float_islands(_graph(("MEAN", "pool", "mean"), integer=False)) == []


@pytest.mark.parametrize("divisor, named", [(2.0, []), (-0.25, []), (3.0, ["<root> (float: div)"])])
def test_a_division_by_a_constant_is_exact_only_by_a_power_of_two(divisor, named):
    """``x / c`` is written as ``x * (1 / c)``: the same bits as PyTorch's division when ``1 / c`` is exact."""
    graph = _graph()
    x, y = graph.ops[-1].outputs[0], Tensor("y", (1, 4))
    reciprocal = Tensor("c", (), data=np.array(1 / divisor, np.float32))
    graph.ops.append(Op("MUL", [x, reciprocal], [y], {"FusedActivationFunction": 0}, origin="div"))
    assert float_islands(graph) == named
