"""A zoo of small structures written the many ways real model code writes them, for int8 exactness tests and
benchmarks (issue 13): in-place ops, functional and module forms of one layer, subclassed layers, gating, concat /
split / chunk, upsampling, shared modules and tied weights, pooling variants, residual blocks, depthwise-separable
and shuffled channels, a transformer block, RNNs, mobile activations, dilated / strided / 1-D convs, padding modes.

Kept apart from :data:`slimkit.models.zoo.ZOO` on purpose: that zoo holds the structures that make channel pruning
hard, and the speedup, capture and converter tests run over every one of its entries (RNNs, tied weights and
in-place forms would add minutes there and test nothing about pruning). Every structure here reads the bundled
digits (:func:`slimkit.data.load_digits`), so that each can also be trained (QAT) on real data:

- ``'image'``: ``(N, 1, 16, 16)``, the 8x8 digit upsampled 2x (nearest);
- ``'rows'``: ``(N, 8, 8)``, the digit's rows as a sequence of 8 tokens of 8 features (RNNs, attention) or as
  8 channels over 8 time steps (1-D convs).

Each model ends in 10 logits. Example:

>>> import torch
>>> from tests.int8zoo.structures import STRUCTURES, build
>>> model, x = build('inplace_residual')
>>> model(x).shape, len(STRUCTURES) >= 20
(torch.Size([4, 10]), True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimkit.data import load_digits

CLASSES = 10


def _cbr(cin: int, cout: int, kernel: int = 3, stride: int = 1, **kwargs) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False, **kwargs),
                         nn.BatchNorm2d(cout), nn.ReLU())


class _Head(nn.Module):
    """Global average pooling and a Linear classifier, the common tail of the image structures."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------- in-place ops
class InplaceResidual(nn.Module):
    """Hugging Face ResNet style: ``hidden += residual`` then ``relu_()`` on the sum, and ``nn.ReLU(inplace=True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.stem(x)
        hidden = self.bn2(self.conv2(self.act(self.bn1(self.conv1(residual)))))
        hidden += residual
        return self.head(hidden.relu_())


class InplaceMethods(nn.Module):
    """``x.add_(y)`` with its result dropped, ``x.mul_(g)``, ``x.sub_(y)`` and ``F.relu(..., inplace=True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(1, 8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.a(x)
        y = self.b(x)
        y.add_(x)
        z = self.c(x)
        z.mul_(y)
        z.sub_(x)
        return self.head(F.relu(z, inplace=True))


# ---------------------------------------------------------------- functional and module forms
class FunctionalLayers(nn.Module):
    """``F.conv2d`` / ``F.linear`` on the module's own parameters, ``F.relu`` beside ``nn.ReLU``, ``torch.relu``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 1, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(8) * 0.1)
        self.conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.fc_weight = nn.Parameter(torch.randn(CLASSES, 12) * 0.3)
        self.fc_bias = nn.Parameter(torch.zeros(CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(F.conv2d(x, self.weight, self.bias, padding=1))
        x = torch.relu(self.relu(self.conv(x)))
        return F.linear(x.mean((2, 3)), self.fc_weight, self.fc_bias)


class ScaledConv(nn.Conv2d):
    """A subclassed conv whose forward calls ``super().forward``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)


class ConvBNAct(nn.Sequential):
    """A subclassed ``nn.Sequential`` block, the way timm / torchvision write ``Conv2dNormActivation``."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(ScaledConv(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


class SubclassedLayers(nn.Module):
    """Layers that subclass ``nn.Conv2d`` / ``nn.Sequential`` / ``nn.Linear``."""

    class Classifier(nn.Linear):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(1, 8), ConvBNAct(8, 16, 2))
        self.fc = self.Classifier(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).mean((2, 3)))


# ---------------------------------------------------------------- gating
class SigmoidGate(nn.Module):
    """GLU-style gating: ``a * torch.sigmoid(g)`` with both halves from one conv, split with ``chunk``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 8)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.conv(self.stem(x)).chunk(2, dim=1)
        return self.head(a * torch.sigmoid(g))


class SqueezeExcite(nn.Module):
    """An SE block with ``nn.Sigmoid`` and a residual: the gate is ``(N, C, 1, 1)``, broadcast onto the map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 16)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(16, 4, 1)
        self.expand = nn.Conv2d(4, 16, 1)
        self.gate = nn.Sigmoid()
        self.head = _Head(16)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        scale = self.gate(self.expand(F.relu(self.reduce(self.squeeze(x)))))
        return self.head(x + x * scale)


# ---------------------------------------------------------------- concat / split / chunk
class ConcatSplit(nn.Module):
    """``torch.split`` with uneven sizes, ``torch.cat`` of branches, ``torch.chunk`` and ``torch.concat``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 12)
        self.left = _cbr(4, 4)
        self.right = _cbr(8, 8, 1)
        self.mix = nn.Conv2d(12, 12, 3, padding=1)
        self.head = _Head(12)

    def forward(self, x: Tensor) -> Tensor:
        left, right = torch.split(self.stem(x), [4, 8], dim=1)
        x = torch.cat([self.left(left), self.right(right)], dim=1)
        a, b, c = torch.chunk(self.mix(x), 3, dim=1)
        return self.head(torch.concat([c, a, b], 1))


# ---------------------------------------------------------------- upsampling
class UpsampleNearest(nn.Module):
    """Down with a strided conv, up with ``F.interpolate(nearest)`` and ``nn.Upsample``, skip concat."""

    def __init__(self) -> None:
        super().__init__()
        self.down = _cbr(1, 8, stride=2)
        self.down2 = _cbr(8, 8, stride=2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = _cbr(16, 8)
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        d1 = self.down(x)
        d2 = F.interpolate(self.down2(d1), scale_factor=2, mode="nearest")
        return self.head(self.up(self.fuse(torch.cat([d1, d2], 1))))


class UpsampleBilinear(nn.Module):
    """``F.interpolate(bilinear)`` to a given size, added to a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 8)
        self.down = _cbr(8, 8, stride=2)
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        up = F.interpolate(self.down(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(x + up)


class TransposedDecoder(nn.Module):
    """``nn.ConvTranspose2d`` upsampling (stride 2), then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.down = _cbr(1, 8, stride=2)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.conv = _cbr(8, 8)
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(self.up(self.down(x))))


# ---------------------------------------------------------------- sharing
class SharedModule(nn.Module):
    """One conv block applied three times (shared weights, activation ranges per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for _ in range(3):
            x = self.block(x)
        return self.head(x)


class TiedWeights(nn.Module):
    """An autoencoder-style MLP whose decoder Linear shares the encoder's weight (``decoder.weight = encoder.weight``
    used transposed through ``F.linear``), and a classifier tied to an embedding-like projection."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(256, 24)
        self.decoder_bias = nn.Parameter(torch.zeros(256))
        self.second = nn.Linear(256, 24)
        self.second.weight = self.encoder.weight
        self.fc = nn.Linear(48, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        h = F.relu(self.encoder(x))
        recon = F.linear(h, self.encoder.weight.t(), self.decoder_bias)
        return self.fc(torch.cat([h, F.relu(self.second(recon))], 1))


# ---------------------------------------------------------------- pooling
class PoolVariants(nn.Module):
    """Max pooling with ``ceil_mode``, average pooling with and without ``count_include_pad``, adaptive pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 8)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv = _cbr(8, 8)
        self.head = nn.Linear(8 * 4 + 8 * 4, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(self.pool1(self.stem(x)))  # 8x8
        a = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        b = F.avg_pool2d(x, 2)
        c = F.adaptive_max_pool2d(a, 2).flatten(1)
        d = F.adaptive_avg_pool2d(b, 2).flatten(1)
        return self.head(torch.cat([c, d], 1))


class MaxPoolPlain(nn.Module):
    """Max pooling (module and functional, padded), flatten with ``x.view(x.size(0), -1)`` into Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _cbr(1, 8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = _cbr(8, 16)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.conv2(self.pool(self.conv1(x))), 3, 2, 1)
        return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))


# ---------------------------------------------------------------- residual blocks
class PreActResidual(nn.Module):
    """Pre-activation residual blocks (BN - ReLU - conv, identity added after the second conv)."""

    class Block(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            out = self.conv1(F.relu(self.bn1(x)))
            return x + self.conv2(F.relu(self.bn2(out)))

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(self.Block(8), self.Block(8))
        self.bn = nn.BatchNorm2d(8)
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.bn(self.blocks(self.stem(x)))))


class PostActResidual(nn.Module):
    """Post-activation residual blocks with a strided 1x1 projection shortcut, ``F.relu(out + shortcut)``."""

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = _cbr(cin, cout, 3, stride)
            self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
                if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x: Tensor) -> Tensor:
            return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 8)
        self.blocks = nn.Sequential(self.Block(8, 8, 1), self.Block(8, 16, 2))
        self.head = _Head(16)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


# ---------------------------------------------------------------- mobile blocks
class DepthwiseSeparable(nn.Module):
    """MobileNetV1: depthwise 3x3 (``groups=channels``) + BN + ReLU6, pointwise 1x1 + BN + ReLU6, strided."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)]
        for cin, cout, stride in ((8, 16, 1), (16, 16, 2)):
            layers += [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                       nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.head = _Head(16)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class HardSwishMobile(nn.Module):
    """MobileNetV3: ``nn.Hardswish``, ``F.hardswish``, an SE with ``F.hardsigmoid`` and a ReLU6 inverted residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = F.hardswish(self.dw(self.expand(x)))
        y = y * F.hardsigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        return self.head(x + self.project(y))


class ChannelShuffle(nn.Module):
    """ShuffleNet: grouped 1x1 convs and a channel shuffle written with ``view`` / ``transpose`` / ``reshape``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 12)
        self.g1 = nn.Sequential(nn.Conv2d(12, 12, 1, groups=3, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(12, 12, 3, 1, 1, groups=12, bias=False), nn.BatchNorm2d(12))
        self.g2 = nn.Sequential(nn.Conv2d(12, 12, 1, groups=3, bias=False), nn.BatchNorm2d(12))
        self.head = _Head(12)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.g1(x)
        n, c, h, w = y.shape
        y = y.view(n, 3, c // 3, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(F.relu(x + self.g2(self.dw(y))))


# ---------------------------------------------------------------- dilated / strided / 1-D / padding
class DilatedStrided(nn.Module):
    """Dilated convs (dilation 2 and 3), a strided conv with ``padding='same'``-free odd sizes, a 5x5 kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 8, 3, padding=2, dilation=2), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=3, dilation=3), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(8, 16, 5, stride=3, padding=1), nn.ReLU())
        self.d = nn.Conv2d(16, 16, 3, stride=2, padding=0)
        self.head = _Head(16)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.d(self.c(self.b(self.a(x)))))


class Conv1dStack(nn.Module):
    """1-D convs over the digit's rows as channels: strided, dilated, ``padding='same'``, BatchNorm1d, max_pool1d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(8, 16, 3, padding="same", bias=False), nn.BatchNorm1d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv1d(16, 16, 3, padding=2, dilation=2), nn.ReLU())
        self.c3 = nn.Conv1d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.c1(x)
        x = F.max_pool1d(self.c2(x) + x, 2, ceil_mode=False)
        return self.fc(F.relu(self.c3(x)).mean(-1))


class PaddingModes(nn.Module):
    """``padding_mode='reflect'`` and ``'replicate'`` convs, ``nn.ReflectionPad2d``, ``nn.ZeroPad2d`` (asymmetric),
    ``F.pad`` with zeros and ``mode='circular'``."""

    def __init__(self) -> None:
        super().__init__()
        self.reflect = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU())
        self.mirror = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(8, 8, 3), nn.ReLU())
        self.replicate = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, padding_mode="replicate"), nn.ReLU())
        self.zero_pad = nn.ZeroPad2d((1, 0, 1, 0))
        self.conv = nn.Conv2d(8, 8, 2)
        self.valid = nn.Conv2d(8, 8, 3)
        self.head = _Head(8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.replicate(self.mirror(self.reflect(x)))
        x = F.relu(self.conv(self.zero_pad(x)))
        x = F.pad(x, (1, 1, 1, 1), mode="circular")
        return self.head(self.valid(F.pad(x, (1, 1, 1, 1))))


# ---------------------------------------------------------------- sequences
class TransformerEncoder(nn.Module):
    """A pre-norm transformer block over the digit's 8 rows: a learned position embedding, ``nn.LayerNorm``,
    multi-head attention written out (``q @ k.transpose``, ``softmax``), ``nn.GELU`` MLP, residuals, mean pooling."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(8, dim)
        self.position = nn.Parameter(torch.randn(1, 8, dim) * 0.1)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.fc = nn.Linear(dim, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x) + self.position
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        x = x + self.mlp(self.norm2(x))
        return self.fc(x.mean(1))


class GroupedQueryAttention(nn.Module):
    """Grouped-query causal attention as Hugging Face's Llama / Qwen2 write it: ``F.scaled_dot_product_attention``
    with ``enable_gqa`` when run eagerly, keys and values repeated per head (``[:, :, None]``, ``expand``,
    ``reshape``) under ``torch.export``. The capture then holds moves the eager forward never calls."""

    def __init__(self, dim: int = 16, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q = nn.Linear(8, dim)
        self.k = nn.Linear(8, kv_heads * self.head_dim)
        self.v = nn.Linear(8, kv_heads * self.head_dim)
        self.o = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, CLASSES)

    def _repeat(self, x: Tensor) -> Tensor:
        b, _, t, d = x.shape
        return x[:, :, None].expand(b, self.kv_heads, self.heads // self.kv_heads, t, d).reshape(b, self.heads, t, d)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if torch.compiler.is_exporting():
            out = F.scaled_dot_product_attention(q, self._repeat(k), self._repeat(v), is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out = self.o(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
        return self.fc(out.mean(1))


class LSTMClassifier(nn.Module):
    """``nn.LSTM`` (batch_first) over the digit's rows, the last step into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class GRUClassifier(nn.Module):
    """``nn.GRU`` (batch_first) over the digit's rows, mean over time into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.fc(out.mean(1))


class MLPForms(nn.Module):
    """An MLP on the flattened digit: ``torch.flatten``, ``nn.Linear`` then ``F.linear``, ``nn.Dropout``, ``x - y``,
    a constant scale ``x * 0.5`` and ``x / 2``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(256, 32)
        self.fc2 = nn.Linear(32, 32)
        self.drop = nn.Dropout(0.1)
        self.fc3 = nn.Linear(32, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc1(torch.flatten(x, 1)))
        g = self.drop(F.relu(F.linear(h, self.fc2.weight, self.fc2.bias)))
        return self.fc3((h - g) * 0.5 + g / 2)


@dataclass(frozen=True)
class Structure:
    """A zoo entry: the model's factory and the view of the digits it reads (``'image'`` or ``'rows'``)."""

    factory: Callable[[], nn.Module]
    data: str = "image"


STRUCTURES: dict[str, Structure] = {
    "inplace_residual": Structure(InplaceResidual),
    "inplace_methods": Structure(InplaceMethods),
    "functional_layers": Structure(FunctionalLayers),
    "subclassed_layers": Structure(SubclassedLayers),
    "sigmoid_gate": Structure(SigmoidGate),
    "squeeze_excite": Structure(SqueezeExcite),
    "concat_split": Structure(ConcatSplit),
    "upsample_nearest": Structure(UpsampleNearest),
    "upsample_bilinear": Structure(UpsampleBilinear),
    "conv_transpose": Structure(TransposedDecoder),
    "shared_module": Structure(SharedModule),
    "tied_weights": Structure(TiedWeights),
    "pool_variants": Structure(PoolVariants),
    "max_pool_flatten": Structure(MaxPoolPlain),
    "preact_residual": Structure(PreActResidual),
    "postact_residual": Structure(PostActResidual),
    "depthwise_separable": Structure(DepthwiseSeparable),
    "hardswish_mobile": Structure(HardSwishMobile),
    "channel_shuffle": Structure(ChannelShuffle),
    "dilated_strided": Structure(DilatedStrided),
    "conv1d": Structure(Conv1dStack, "rows"),
    "padding_modes": Structure(PaddingModes),
    "transformer": Structure(TransformerEncoder, "rows"),
    "gqa_attention": Structure(GroupedQueryAttention, "rows"),
    "lstm": Structure(LSTMClassifier, "rows"),
    "gru": Structure(GRUClassifier, "rows"),
    "mlp_forms": Structure(MLPForms),
}


def digits(data: str, split: str = "train") -> tuple[Tensor, Tensor]:
    """The digits as a structure reads them: ``'image'`` ``(N, 1, 16, 16)`` or ``'rows'`` ``(N, 8, 8)``, with labels."""
    x_train, y_train, x_test, y_test = load_digits()
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    x = torch.from_numpy(np.ascontiguousarray(images))
    if data == "image":
        x = x.repeat_interleave(2, 1).repeat_interleave(2, 2).unsqueeze(1)
    return x, torch.from_numpy(labels)


def build(name: str, seed: int = 0, batch: int = 4) -> tuple[nn.Module, Tensor]:
    """Structure ``name`` in eval mode, seeded, with BatchNorm statistics from 64 training digits (so that a random
    init keeps its activations O(1)), and a batch of ``batch`` test digits."""
    structure = STRUCTURES[name]
    torch.manual_seed(seed)
    model = structure.factory()
    x, _ = digits(structure.data)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(x[:64])
    test, _ = digits(structure.data, "test")
    return model.eval(), test[:batch]
