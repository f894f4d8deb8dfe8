"""Extra test models for the converter (kept in one file; the lead may merge them into slimkit.models)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DenseNetLike(nn.Module):
    """Dense blocks: every layer's output concatenated onto its input."""

    def __init__(self, growth=4, layers=3, num_classes=10):
        super().__init__()
        self.stem = conv_bn_relu(3, 8, stride=2)
        self.layers = nn.ModuleList()
        c = 8
        for _ in range(layers):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1)))
            c += growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, c // 2, 1), nn.AvgPool2d(2))
        self.head = nn.Linear(c // 2, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        x = self.transition(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class GroupConvNet(nn.Module):
    """Grouped convolutions with a ShuffleNet channel shuffle (view / transpose / view)."""

    def __init__(self, groups=2, num_classes=10):
        super().__init__()
        self.groups = groups
        self.stem = conv_bn_relu(3, 8)
        self.g1 = conv_bn_relu(8, 8, 1, groups=groups)
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8))
        self.g2 = conv_bn_relu(8, 16, 1, groups=groups)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.g1(self.stem(x))
        n, c, h, w = x.shape
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = self.g2(self.dw(x))
        return self.head(x.mean((2, 3)))


class UNet(nn.Module):
    """A two-level UNet: max-pool down, transposed-conv and bilinear up, skip concatenations."""

    def __init__(self, c=8, classes=3):
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn_relu(3, c), conv_bn_relu(c, c))
        self.enc2 = nn.Sequential(conv_bn_relu(c, 2 * c), conv_bn_relu(2 * c, 2 * c))
        self.mid = conv_bn_relu(2 * c, 4 * c)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2)
        self.dec2 = conv_bn_relu(4 * c, 2 * c)
        self.dec1 = conv_bn_relu(3 * c, c)
        self.out = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2, mode="bilinear"), e1], 1))
        return self.out(d1)


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block with nn.MultiheadAttention and a GELU MLP."""

    def __init__(self, dim=16, heads=2, vocab=20, num_classes=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        x = self.embed(tokens)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class LSTMNet(nn.Module):
    """Conv1d front end, a two-layer LSTM and a linear head on the last step."""

    def __init__(self, features=6, hidden=8, num_classes=4):
        super().__init__()
        self.conv = nn.Conv1d(features, features, 3, padding=1)
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):  # x: (batch, features, time)
        x = F.relu(self.conv(x)).transpose(1, 2)
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def converter_test_models():
    """``{name: (model, example_input)}`` with small inputs."""
    torch.manual_seed(0)
    return {
        "densenet_like": (DenseNetLike(), torch.randn(1, 3, 32, 32)),
        "group_conv": (GroupConvNet(), torch.randn(1, 3, 16, 16)),
        "unet": (UNet(), torch.randn(1, 3, 32, 32)),
        "transformer_block": (TransformerBlock(), torch.randint(0, 20, (2, 7))),
        "lstm": (LSTMNet(), torch.randn(2, 6, 10)),
    }
