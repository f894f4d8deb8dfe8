"""Fixtures for the pruner tests."""

import pytest
import torch

from tests.algorithms.pruning.pruning_helpers import SmallNet


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():  # distinct BN scales so Slim has no ties
        net.bn1.weight.copy_(torch.linspace(0.1, 1.0, 8)[torch.randperm(8)])
        net.bn2.weight.copy_(torch.linspace(0.05, 1.5, 16)[torch.randperm(16)])
    return net
