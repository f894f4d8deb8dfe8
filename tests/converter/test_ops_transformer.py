"""Transformer ops against the LiteRT interpreter: attention masks, norms, logical masks, pooling divisors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit
from slimkit.converter import TFLiteConverter
from tests.converter.conftest import op_codes
from tests.converter.test_ops import Fn, img

torch.manual_seed(0)
_KEEP = torch.rand(2, 1, 5, 6) > 0.4
_KEEP[0, 0, 1] = False  # a row with no key kept: PyTorch gives zeros there


def _sdpa(**kw):
    return Fn(lambda s, q, k, v, *m: F.scaled_dot_product_attention(q, k, v, *m, **kw))


def _qkv(heads=2, kv_heads=2, length=5, source=6):
    return torch.randn(2, heads, length, 8), torch.randn(2, kv_heads, source, 8), torch.randn(2, kv_heads, source, 4)


class Rotary(nn.Module):
    """Llama-style rotary position embedding on (batch, heads, length, dim)."""

    def __init__(self, length=6, dim=8):
        super().__init__()
        inv = 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)
        angles = torch.outer(torch.arange(length).float(), inv)
        self.register_buffer("cos", torch.cat([angles, angles], -1).cos())
        self.register_buffer("sin", torch.cat([angles, angles], -1).sin())

    def forward(self, x):
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * self.cos + rotated * self.sin


CASES = {
    "sdpa_bool_mask": (_sdpa(), *_qkv(), _KEEP),
    "sdpa_bool_mask_const": (Fn(lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=_KEEP)),
                             *_qkv()),
    "sdpa_float_mask": (_sdpa(), *_qkv(), torch.randn(2, 1, 5, 6)),
    "sdpa_causal": (_sdpa(is_causal=True), *_qkv(source=5)),
    "sdpa_causal_scale": (_sdpa(is_causal=True, scale=0.3), *_qkv(length=4, source=6)),
    "sdpa_gqa": (_sdpa(enable_gqa=True), *_qkv(heads=4, kv_heads=2), _KEEP),
    "gelu_exact_tanh": (Fn(lambda s, x: F.gelu(x) + F.gelu(x * 2, approximate="tanh")), torch.randn(2, 5, 8)),
    "layer_norm_affine": (Fn(lambda s, x: s.mods[0](x), nn.LayerNorm(8)), torch.randn(2, 5, 8) * 3 + 1),
    "rms_norm": (Fn(lambda s, x: s.mods[0](x), nn.RMSNorm(8, eps=1e-6)), torch.randn(2, 5, 8)),
    "rms_norm_no_eps": (Fn(lambda s, x: F.rms_norm(x, (5, 8))), torch.randn(2, 5, 8)),
    "embedding_padding": (Fn(lambda s, i: s.mods[0](i), nn.Embedding(12, 6, padding_idx=0)),
                          torch.tensor([[0, 3, 11, 0], [5, 0, 0, 1]])),
    "rotary": (Fn(lambda s, x: s.mods[0](x), Rotary()), torch.randn(2, 3, 6, 8)),
    "batch_matmul_4d": (Fn(lambda s, x, y: x @ y.transpose(-1, -2)), torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4)),
    "softmax_heads": (Fn(lambda s, x: torch.softmax(x, -1)), torch.randn(2, 3, 5, 6) * 4),
    "masked_fill": (Fn(lambda s, x, m: x.masked_fill(m, -3.0) + x.masked_fill(x > 1, torch.tensor(2.0))),
                    torch.randn(2, 5), torch.rand(2, 5) > 0.5),
    "where_scalars": (Fn(lambda s, x: torch.where(x > 0, x, 0.5) + torch.where(x < 0, -1.0, x)
                         + torch.where(x > 0.3, 1.0, 0.0)), torch.randn(2, 6)),
    "logical_ops": (Fn(lambda s, x, y: (((x > 0) & (y < 0)) | ~(x > y)).float() + ((x > 0) ^ (y > 0)).float()
                       + torch.logical_and(x > 1, y > -1).float() + torch.logical_or(x < -1, y > 1).float()),
                    torch.randn(3, 4), torch.randn(3, 4)),
    "to_device": (Fn(lambda s, x: x.to("cpu", torch.float32) * 2 + (x > 0).to("cpu", torch.float32)),
                  torch.randn(2, 3)),
    "vector_norms": (Fn(lambda s, x: torch.linalg.vector_norm(x, dim=-1)
                        + torch.linalg.vector_norm(x, 1, (1, 2))[:, None]
                        + torch.linalg.vector_norm(x, float("inf"), -1) + torch.linalg.vector_norm(x, 3, -1)),
                     torch.randn(2, 3, 4)),
    "normalize": (Fn(lambda s, x: F.normalize(x, dim=-1)), torch.randn(3, 8)),
    "index_two_tensors": (Fn(lambda s, x: x[torch.arange(2)[:, None, None], torch.arange(4).flip(0)[None, None, :]]),
                          torch.randn(2, 4, 3)),
    "avg_pool_ceil": (Fn(lambda s, x: F.avg_pool2d(x, 3, 2, ceil_mode=True)), img(h=8, w=9)),
    "avg_pool_ceil_pad": (Fn(lambda s, x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)), img(h=8, w=9)),
    "avg_pool_ceil_pad_exclude": (Fn(lambda s, x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
                                  img(h=8, w=9)),
    "avg_pool_exclude_not_same": (Fn(lambda s, x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)), img()),
    "avg_pool_kernel_past_input": (Fn(lambda s, x: s.mods[0](x), nn.AvgPool2d(16, ceil_mode=True)), img(h=5, w=6)),
    "avg_pool1d_ceil_exclude": (Fn(lambda s, x: F.avg_pool1d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
                                torch.randn(2, 4, 10)),
    "adaptive_avg_pool1d_one": (Fn(lambda s, x: F.adaptive_avg_pool1d(x, 1)), torch.randn(2, 4, 7)),
    "adaptive_avg_pool1d_uneven": (Fn(lambda s, x: F.adaptive_avg_pool1d(x, 3)), torch.randn(2, 4, 7)),
    "adaptive_max_pool1d": (Fn(lambda s, x: F.adaptive_max_pool1d(x, 4) + F.adaptive_max_pool1d(x, 1)),
                            torch.randn(2, 3, 12)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_transformer_op_matches_pytorch(name, check):
    model, *inputs = CASES[name]
    check(model, *inputs)


def test_boolean_mask_masks_instead_of_adding(check):
    """The mask's False entries get zero weight (adding a 0/1 mask would leave them in)."""
    q, k, v = _qkv()
    path, _ = check(CASES["sdpa_bool_mask"][0], q, k, v, _KEEP)
    assert "SELECT_V2" in op_codes(path) and "ADD" not in op_codes(path)


@pytest.mark.parametrize("code, act", [("FULLY_CONNECTED", nn.Linear(8, 8)), ("CONV_2D", nn.Conv2d(4, 4, 1))])
def test_tanh_is_never_fused(code, act, check):
    x = torch.randn(2, 8) if code == "FULLY_CONNECTED" else img()
    path, _ = check(Fn(lambda s, x: torch.tanh(s.mods[0](x)), act), x)
    assert op_codes(path) == [code, "TANH"]


def test_relu_after_concat_stays_an_op(check):
    """LiteRT ignores a fused activation on CONCATENATION."""
    path, _ = check(Fn(lambda s, x, y: F.relu(torch.cat([x, y], 1))), torch.randn(2, 3), torch.randn(2, 4))
    assert op_codes(path) == ["CONCATENATION", "RELU"]


def test_relu_still_fuses_into_linear(check):
    path, _ = check(Fn(lambda s, x: F.relu(s.mods[0](x)), nn.Linear(8, 4)), torch.randn(2, 8))
    assert op_codes(path) == ["FULLY_CONNECTED"]


@pytest.mark.parametrize("fn, why", [
    (lambda s, x: (x.long() & (x * 2).long()).float(), "bitwise and of int64 tensors has no TFLite kernel"),
    (lambda s, x: F.scaled_dot_product_attention(x, x, x, dropout_p=0.5), "dropout_p=0.5"),
    (lambda s, x: torch.linalg.vector_norm(x, -1.0, -1), "ord=-1.0"),
    (lambda s, x: F.adaptive_max_pool1d(x, 3), r"from 4 to 3 \(not a whole factor\)"),
])
def test_inexact_cases_named_before_writing(fn, why, tmp_path):
    path = tmp_path / "m.tflite"
    with pytest.raises(slimkit.UnsupportedOpError, match=why):
        TFLiteConverter(Fn(fn).eval(), torch.randn(2, 3, 4), path).convert()
    assert not path.exists()
