"""count_flops_params: MACs per sample and parameter counts, NNI-style results."""

from __future__ import annotations

import torch
from torch import nn

from slimkit.utils import count_flops_params


def test_counts_conv_linear_batchnorm_per_sample():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, groups=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, groups=4),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    flops, params, results = count_flops_params(model, torch.randn(2, 3, 8, 8))
    expected = [4 * 8 * 8 * 27, 4 * 8 * 8, 4 * 6 * 6 * 9, 144 * 5]
    assert [r["flops"] for r in results] == expected
    assert flops == sum(expected)
    assert params == sum(p.numel() for p in model.parameters())
    assert results[0]["output_shape"] == (2, 4, 8, 8)


def test_mode_is_restored():
    model = nn.Sequential(nn.Linear(2, 2)).train()
    count_flops_params(model, (torch.randn(1, 2),))
    assert model.training
