"""Every converter against the LiteRT interpreter: each op alone, several shapes and layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.converter.conftest import op_codes


class Fn(nn.Module):
    def __init__(self, fn, *modules):
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(modules)

    def forward(self, *x):
        return self.fn(self, *x)


def img(c=4, h=8, w=8, n=1):
    return torch.randn(n, c, h, w)


CASES = {
    # convolutions
    "conv2d": (Fn(lambda s, x: s.mods[0](x), nn.Conv2d(4, 6, 3)), img()),
    "conv2d_same": (Fn(lambda s, x: s.mods[0](x), nn.Conv2d(4, 6, 3, padding=1)), img()),
    "conv2d_stride2_pad": (Fn(lambda s, x: s.mods[0](x), nn.Conv2d(4, 6, 3, 2, 1)), img(h=9, w=10)),
    "conv2d_dilated": (Fn(lambda s, x: s.mods[0](x), nn.Conv2d(4, 6, 3, padding=2, dilation=2)), img()),
    "conv2d_nobias_rect": (Fn(lambda s, x: s.mods[0](x), nn.Conv2d(4, 6, (3, 1), (2, 1), (1, 0), bias=False)), img()),
    "conv2d_batch2": (Fn(lambda s, x: s.mods[0](x), nn.Conv2d(4, 6, 3, padding=1)), img(n=2)),
    "depthwise": (Fn(lambda s, x: s.mods[0](x), nn.Conv2d(4, 4, 3, padding=1, groups=4)), img()),
    "depthwise_mult2": (Fn(lambda s, x: s.mods[0](x), nn.Conv2d(4, 8, 3, 2, 1, groups=4)), img()),
    "group_conv": (Fn(lambda s, x: s.mods[0](x), nn.Conv2d(4, 6, 3, padding=1, groups=2)), img()),
    "conv1d": (Fn(lambda s, x: s.mods[0](x), nn.Conv1d(4, 6, 3, padding=1)), torch.randn(1, 4, 12)),
    "conv1d_stride": (Fn(lambda s, x: s.mods[0](x), nn.Conv1d(4, 6, 5, stride=2)), torch.randn(2, 4, 15)),
    "conv_transpose": (Fn(lambda s, x: s.mods[0](x), nn.ConvTranspose2d(4, 3, 4, 2, 1)), img()),
    "conv_transpose_valid": (Fn(lambda s, x: s.mods[0](x), nn.ConvTranspose2d(4, 3, 3, 2)), img()),
    "conv_transpose_pad": (Fn(lambda s, x: s.mods[0](x), nn.ConvTranspose2d(4, 3, 3, 2, 1, output_padding=1)), img()),
    # linear algebra
    "linear": (Fn(lambda s, x: s.mods[0](x), nn.Linear(8, 5)), torch.randn(3, 8)),
    "linear_3d": (Fn(lambda s, x: s.mods[0](x), nn.Linear(8, 5)), torch.randn(2, 3, 8)),
    "matmul": (Fn(lambda s, x, y: x @ y), torch.randn(2, 3, 4), torch.randn(2, 4, 5)),
    "bmm": (Fn(lambda s, x, y: torch.bmm(x, y)), torch.randn(2, 3, 4), torch.randn(2, 4, 5)),
    "matmul_const": (Fn(lambda s, x: x @ s.mods[0].weight.T, nn.Linear(4, 6)), torch.randn(3, 4)),
    "embedding": (Fn(lambda s, i: s.mods[0](i), nn.Embedding(10, 4)), torch.tensor([[1, 2, 9], [0, 3, 3]])),
    # normalisation
    "batchnorm_alone": (Fn(lambda s, x: s.mods[0](x + 1), nn.BatchNorm2d(4)), img()),
    "batchnorm1d": (Fn(lambda s, x: s.mods[0](x), nn.BatchNorm1d(4)), torch.randn(3, 4)),
    "layer_norm": (Fn(lambda s, x: s.mods[0](x), nn.LayerNorm(8)), torch.randn(2, 3, 8)),
    # elementwise
    "add_sub_mul_div": (Fn(lambda s, x, y: (x + y) * (x - y) / (y.abs() + 1)), img(), img()),
    "scalars": (Fn(lambda s, x: (2 - x) * 3 + 1 / (x * x + 1) - 0.5), img()),
    "broadcast_channel": (Fn(lambda s, x: s.mods[0](x) * torch.arange(6.0).view(1, 6, 1, 1) + 1,
                             nn.Conv2d(4, 6, 1)), img()),
    "broadcast_pool": (Fn(lambda s, x: x * F.adaptive_avg_pool2d(x, 1)), img()),
    "broadcast_rank": (Fn(lambda s, x, y: x + y), torch.randn(2, 3, 4), torch.randn(4)),
    # shapes
    "cat_channels": (Fn(lambda s, x: torch.cat([s.mods[0](x), x], 1), nn.Conv2d(4, 2, 1)), img()),
    "cat_last": (Fn(lambda s, x, y: torch.cat([x, y], -1)), torch.randn(2, 3), torch.randn(2, 5)),
    "split_chunk": (Fn(lambda s, x: [t * i for i, t in enumerate(torch.chunk(s.mods[0](x), 3, 1))],
                       nn.Conv2d(4, 6, 1)), img()),
    "split_sizes": (Fn(lambda s, x: torch.split(x, [1, 3], dim=1)[1] + 0), img()),
    "slice_select": (Fn(lambda s, x: x[:, 1:3, ::2, 2] + x[:, 0, 1:, 3:4].sum()), img()),
    "index": (Fn(lambda s, x: x[:, torch.tensor([2, 0])]), img()),
    "reshape_flatten": (Fn(lambda s, x: s.mods[0](x).flatten(1).view(1, -1, 2)), nn.Conv2d(4, 2, 1)) if False
    else (Fn(lambda s, x: s.mods[0](x).flatten(1).view(1, -1, 2), nn.Conv2d(4, 2, 1)), img()),
    "squeeze_unsqueeze": (Fn(lambda s, x: x.unsqueeze(2).squeeze(0) * 2), torch.randn(1, 3, 4)),
    "permute": (Fn(lambda s, x: x.permute(0, 2, 3, 1).reshape(1, -1, 4)), img()),
    "transpose": (Fn(lambda s, x: x.transpose(1, 2) + 1), torch.randn(2, 3, 5)),
    "pad_constant": (Fn(lambda s, x: F.pad(x, (1, 2, 0, 1), value=0.5)), img()),
    "pad_zero": (Fn(lambda s, x: F.pad(x, (1, 1, 2, 0))), img()),
    "pad_reflect": (Fn(lambda s, x: F.pad(x, (1, 1, 2, 0), mode="reflect")), img()),
    "pad_replicate": (Fn(lambda s, x: F.pad(x, (1, 2, 2, 0), mode="replicate")), img()),
    "pad_circular": (Fn(lambda s, x: F.pad(x, (2, 1, 0, 1), mode="circular")), img()),
    "pad_replicate_1d": (Fn(lambda s, x: nn.ReplicationPad1d((2, 1))(x)), torch.randn(1, 4, 12)),
    # pooling
    "max_pool": (Fn(lambda s, x: F.max_pool2d(x, 2)), img()),
    "max_pool_pad": (Fn(lambda s, x: F.max_pool2d(x, 3, 2, 1)), img()),
    "max_pool_ceil": (Fn(lambda s, x: F.max_pool2d(x, 3, 2, ceil_mode=True)), img(h=8, w=9)),
    "avg_pool": (Fn(lambda s, x: F.avg_pool2d(x, 2)), img()),
    "avg_pool_pad": (Fn(lambda s, x: F.avg_pool2d(x, 3, 1, 1)), img()),
    "avg_pool_pad_exclude": (Fn(lambda s, x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)), img()),
    "max_pool1d": (Fn(lambda s, x: F.max_pool1d(x, 3, 2, 1)), torch.randn(2, 4, 12)),
    "avg_pool1d": (Fn(lambda s, x: F.avg_pool1d(x, 2)), torch.randn(2, 4, 12)),
    "adaptive_avg_1": (Fn(lambda s, x: F.adaptive_avg_pool2d(x, 1)), img()),
    "adaptive_avg_2": (Fn(lambda s, x: F.adaptive_avg_pool2d(x, (2, 4))), img()),
    # reductions
    "mean_sum_max": (Fn(lambda s, x: x.mean((2, 3)) + x.sum(1).amax(-1, keepdim=True).mean(1, keepdim=True)), img()),
    "argmax": (Fn(lambda s, x: (x.argmax(1), x.argmin(-1, keepdim=True), x.max(2))), img()),
    "mean_keep": (Fn(lambda s, x: x.mean(1, keepdim=True) - x), img()),
    # softmax
    "softmax_channels": (Fn(lambda s, x: torch.softmax(s.mods[0](x), 1), nn.Conv2d(4, 4, 1)), img()),
    "softmax_last": (Fn(lambda s, x: torch.softmax(x, -1)), torch.randn(2, 7)),
    "log_softmax": (Fn(lambda s, x: torch.log_softmax(x, 1)), torch.randn(2, 7)),
    # activations
    "relu": (Fn(lambda s, x: F.relu(x)), img()),
    "relu6": (Fn(lambda s, x: F.relu6(x * 4)), img()),
    "hardtanh": (Fn(lambda s, x: F.hardtanh(x * 3, -2, 1)), img()),
    "leaky_relu": (Fn(lambda s, x: F.leaky_relu(x, 0.1)), img()),
    "prelu": (Fn(lambda s, x: s.mods[0](x), nn.PReLU(4, 0.2)), img()),
    "prelu_single": (Fn(lambda s, x: s.mods[0](x), nn.PReLU()), torch.randn(3, 5)),
    "elu": (Fn(lambda s, x: F.elu(x)), img()),
    "gelu": (Fn(lambda s, x: F.gelu(x)), img()),
    "gelu_tanh": (Fn(lambda s, x: F.gelu(x, approximate="tanh")), img()),
    "silu": (Fn(lambda s, x: F.silu(x)), img()),
    "hardswish": (Fn(lambda s, x: F.hardswish(x * 4)), img()),
    "hardsigmoid": (Fn(lambda s, x: F.hardsigmoid(x * 4)), img()),
    "sigmoid_tanh": (Fn(lambda s, x: torch.sigmoid(x) + torch.tanh(x)), img()),
    "clamp": (Fn(lambda s, x: torch.clamp(x, -0.5, 0.7)), img()),
    # resize
    "nearest": (Fn(lambda s, x: F.interpolate(x, scale_factor=2, mode="nearest")), img()),
    "nearest_size": (Fn(lambda s, x: F.interpolate(x, size=(12, 5), mode="nearest")), img()),
    "bilinear": (Fn(lambda s, x: F.interpolate(x, scale_factor=2, mode="bilinear")), img()),
    "bilinear_align": (Fn(lambda s, x: F.interpolate(x, size=(11, 13), mode="bilinear", align_corners=True)), img()),
    # more shape / elementwise
    "expand": (Fn(lambda s, x: x.mean((2, 3), keepdim=True).expand(-1, -1, 8, 8) + x), img()),
    "repeat": (Fn(lambda s, x: x.repeat(1, 2, 1) * 2), torch.randn(2, 3, 4)),
    "stack": (Fn(lambda s, x, y: torch.stack([x, y], 1) + 1), torch.randn(2, 3), torch.randn(2, 3)),
    "zeros_like": (Fn(lambda s, x: x + torch.ones_like(x) * 2), img()),
    "where_compare": (Fn(lambda s, x, y: torch.where(x > y, x, y * 2) + (x <= 0.5).float()), img(), img()),
    "floor_sin_cos": (Fn(lambda s, x: torch.floor(x * 3) + torch.sin(x) * torch.cos(x)), img()),
    "flatten_linear_nhwc": (Fn(lambda s, x: s.mods[1](torch.flatten(s.mods[0](x), 1)), nn.Conv2d(4, 3, 3),
                                nn.Linear(3 * 6 * 6, 5)), img()),
    "clamp_min_max": (Fn(lambda s, x: x.clamp(min=0.1) + x.clamp(max=0.2) + x.clamp(min=0)), img()),
    "softplus": (Fn(lambda s, x: F.softplus(x * 10)), img()),
    "adaptive_max": (Fn(lambda s, x: F.adaptive_max_pool2d(x, 1) + F.adaptive_max_pool2d(x, 2).sum()), img()),
    "baddbmm": (Fn(lambda s, b, x, y: torch.baddbmm(b, x, y, beta=0.5, alpha=2.0)), torch.randn(2, 3, 5),
                torch.randn(2, 3, 4), torch.randn(2, 4, 5)),
    # attention
    "sdpa": (Fn(lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v)), torch.randn(1, 2, 5, 4),
             torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_pytorch(name, check):
    model, *inputs = CASES[name]
    check(model, *inputs)


@pytest.mark.parametrize("name", ["conv2d_same", "cat_channels", "softmax_channels", "max_pool_pad"])
def test_op_nchw_io(name, check):
    model, *inputs = CASES[name]
    check(model, *inputs, nchw_transpose=False)


def test_group_conv_rewrite(check):
    model, x = CASES["group_conv"]
    path, _ = check(model, x, group_conv_rewrite=True)
    assert op_codes(path) == ["SPLIT", "CONV_2D", "CONV_2D", "CONCATENATION"]
