"""Small models covering the structures that make channel pruning hard, for tests and examples.

Each entry of :data:`ZOO` is ``name -> (factory, input_shape)``; the models are tiny (a few
thousand parameters, inputs of 16x16 or less) so a test over the whole zoo stays fast.

Example:

>>> import torch
>>> from slimkit.models.zoo import ZOO, build
>>> model, x = build('resnet_basic')
>>> model(x).shape
torch.Size([2, 10])
>>> sorted(ZOO)[:3]
['concat_group_conv', 'conv1d_audio', 'densenet_concat']
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _cbr(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class PlainCNN(nn.Module):
    """conv-bn-relu x3, max-pool, flatten into a Linear (a channel maps to H*W features)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 8), _cbr(8, 16, stride=2), nn.Conv2d(16, 16, 3, padding=1),
                                      nn.PReLU(16), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(16 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(self.features(x), 1))))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.down is None else self.down(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + identity)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


class _Classifier(nn.Module):
    def __init__(self, stem: nn.Module, body: nn.Module, channels: int, num_classes: int = 10):
        super().__init__()
        self.stem, self.body = stem, body
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.body(self.stem(x)), 1).flatten(1))


def resnet_basic() -> nn.Module:
    """Two BasicBlock stages: identity and 1x1-downsample residual adds."""
    return _Classifier(_cbr(3, 8), nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2), BasicBlock(16, 16)), 16)


def resnet_bottleneck() -> nn.Module:
    """Bottleneck blocks (1x1 - 3x3 - 1x1, expansion 4)."""
    return _Classifier(_cbr(3, 16), nn.Sequential(Bottleneck(16, 4, 16), Bottleneck(16, 8, 32, 2),
                                                  Bottleneck(32, 8, 32)), 32)


def resnext_group() -> nn.Module:
    """ResNeXt blocks: grouped 3x3 convs (cardinality 4)."""
    return _Classifier(_cbr(3, 16), nn.Sequential(Bottleneck(16, 16, 32, groups=4), Bottleneck(32, 16, 32, 2, 4)),
                       32)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_block() -> nn.Module:
    """MobileNetV2 inverted residuals (expand, depthwise, project, residual)."""
    return _Classifier(_cbr(3, 8), nn.Sequential(InvertedResidual(8, 8), InvertedResidual(8, 16, 2),
                                                 InvertedResidual(16, 16)), 16)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


def densenet_concat() -> nn.Module:
    """DenseNet-style blocks: every layer's output concatenated onto its input, then a transition."""
    body = nn.Sequential(DenseLayer(8, 6), DenseLayer(14, 6), DenseLayer(20, 6), nn.BatchNorm2d(26), nn.ReLU(),
                         nn.Conv2d(26, 12, 1), nn.AvgPool2d(2))
    return _Classifier(nn.Conv2d(3, 8, 3, padding=1), body, 12)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(_cbr(half, half, 1), nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
                                    nn.BatchNorm2d(half), _cbr(half, half, 1))

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1), 2)


def shufflenet_split() -> nn.Module:
    """ShuffleNetV2 units: channel split (chunk), branch, concat, channel shuffle (view/transpose)."""
    return _Classifier(_cbr(3, 16), nn.Sequential(ShuffleUnit(16), ShuffleUnit(16)), 16)


class SEBlock(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.conv = _cbr(channels, channels)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(out, 1)))))
        return x + out * scale


def squeeze_excite() -> nn.Module:
    """Squeeze-excite: a (N, C, 1, 1) gate broadcast-multiplied onto the feature map, plus a residual."""
    return _Classifier(_cbr(3, 16), nn.Sequential(SEBlock(16), SEBlock(16)), 16)


class TinyUNet(nn.Module):
    """Encoder-decoder: strided convs down, ConvTranspose2d and bilinear upsampling up, skip concats."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = _cbr(3, 8)
        self.enc2 = _cbr(8, 16, stride=2)
        self.enc3 = _cbr(16, 16, stride=2)
        self.up2 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec2 = _cbr(24, 8)
        self.dec1 = _cbr(16, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="bilinear", align_corners=False), e1], 1))
        return self.head(d1)


class SharedHead(nn.Module):
    """An FPN-like detector: one head module applied to three feature maps (called three times)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = _cbr(3, 8, stride=2)
        self.stage2 = _cbr(8, 8, stride=2)
        self.stage3 = _cbr(8, 8, stride=2)
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, x: Tensor) -> Tensor:
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        return torch.cat([self.head(f).flatten(2) for f in (f1, f2, f3)], 2)


class TransformerBlock(nn.Module):
    """Pre-norm attention + MLP over (batch, tokens, dim), with a Linear classifier on the mean token."""

    def __init__(self, dim: int = 16, heads: int = 2, hidden: int = 32, num_classes: int = 10):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(12, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(1))


class AudioConv1d(nn.Module):
    """A keyword-spotting style Conv1d stack over (batch, features, time) with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(4, 16, 5, padding=2, bias=False), nn.BatchNorm1d(16), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1, bias=False), nn.BatchNorm1d(16), nn.ReLU())
        self.conv3 = nn.Conv1d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 6)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = F.relu(x + self.conv3(self.conv2(x)))
        return self.fc(F.max_pool1d(x, 2).mean(2))


class ConcatGroupConv(nn.Module):
    """Two branches concatenated, then a grouped conv across the concat (groups straddle the branches)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(3, 8)
        self.b = _cbr(3, 4)
        self.group = nn.Conv2d(12, 12, 3, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.out = nn.Conv2d(12, 8, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn(self.group(torch.cat([self.a(x), self.b(x)], 1))))
        return F.adaptive_avg_pool2d(self.out(y), 1).flatten(1)


class GQAttention(nn.Module):
    """Grouped-query self-attention in the style of Hugging Face's Llama (``view(..., -1, head_dim)``, key /
    value heads repeated to their query heads), for examples and tests.

    Args:
        dim: model width.
        heads: query heads.
        kv_heads: key / value heads (``heads`` must be a multiple).
    """

    def __init__(self, dim: int, heads: int, kv_heads: int):
        super().__init__()
        self.head_dim = dim // heads
        self.num_heads, self.num_key_value_heads = heads, kv_heads
        self.groups = heads // kv_heads
        self.q = nn.Linear(dim, heads * self.head_dim)
        self.k = nn.Linear(dim, kv_heads * self.head_dim)
        self.v = nn.Linear(dim, kv_heads * self.head_dim)
        self.o = nn.Linear(heads * self.head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (self.q, self.k, self.v))
        k, v = k.repeat_interleave(self.groups, 1), v.repeat_interleave(self.groups, 1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(out.transpose(1, 2).reshape(*x.shape[:-1], -1))


ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "plain_cnn": (PlainCNN, (2, 3, 16, 16)),
    "resnet_basic": (resnet_basic, (2, 3, 16, 16)),
    "resnet_bottleneck": (resnet_bottleneck, (2, 3, 16, 16)),
    "mobilenet_block": (mobilenet_block, (2, 3, 16, 16)),
    "densenet_concat": (densenet_concat, (2, 3, 16, 16)),
    "shufflenet_split": (shufflenet_split, (2, 3, 16, 16)),
    "resnext_group": (resnext_group, (2, 3, 16, 16)),
    "squeeze_excite": (squeeze_excite, (2, 3, 16, 16)),
    "unet": (TinyUNet, (2, 3, 16, 16)),
    "shared_head": (SharedHead, (2, 3, 16, 16)),
    "transformer": (TransformerBlock, (2, 6, 12)),
    "conv1d_audio": (AudioConv1d, (2, 4, 32)),
    "concat_group_conv": (ConcatGroupConv, (2, 3, 12, 12)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    """A zoo model in eval mode with randomised BatchNorm statistics, and an input batch for it."""
    factory, shape = ZOO[name]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = factory()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval(), torch.randn(*shape, generator=generator)
