"""Shared helpers for the pruner tests: small models whose weights decide the answer.

A uniquely named module (not conftest) so that it never collides with other test folders' helpers.
"""

import numpy as np
import torch
from torch import nn


def set_weight(module: nn.Module, values, bias=None) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(values, dtype=torch.float32).view_as(module.weight))
        if bias is not None:
            module.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def conv_with_filters(norms_per_filter, in_channels=1, kernel=1, bias=False) -> nn.Conv2d:
    """A Conv2d whose filter i is filled with the constant ``norms_per_filter[i]``."""
    conv = nn.Conv2d(in_channels, len(norms_per_filter), kernel, bias=bias)
    values = torch.tensor(norms_per_filter, dtype=torch.float32).view(-1, 1, 1, 1).expand_as(conv.weight)
    set_weight(conv, values)
    return conv


def zero_fraction(mask) -> float:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return float((array == 0).mean())


class SmallNet(nn.Module):
    """conv-bn-relu x2 -> pool -> linear; small enough for every pruner in milliseconds."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def drive_to_sparsity(cls, model, op_types, sparsity, feed):
    """Compress ``model`` with pruner class ``cls`` and drive it to ``sparsity``: AGP through its schedule,
    Lottery Ticket through its rounds, every other pruner with ``feed(pruner)`` (forward passes that give
    the activation-based pruners their statistics; harmless elsewhere). Returns the pruner."""
    from slimkit.algorithms.pruning import AGPPruner, LotteryTicketPruner

    if issubclass(cls, AGPPruner):
        pruner = cls(model, [{"final_sparsity": sparsity, "end_epoch": 2, "op_types": op_types}])
        pruner.compress()
        for epoch in range(3):
            pruner.update_epoch(epoch)
    elif issubclass(cls, LotteryTicketPruner):
        pruner = cls(model, [{"sparsity": sparsity, "prune_iterations": 2, "op_types": op_types}])
        pruner.compress()
        for _ in pruner.get_prune_iterations():
            pruner.prune_iteration_start()
    else:
        pruner = cls(model, [{"sparsity": sparsity, "op_types": op_types}])
        pruner.compress()
        feed(pruner)
    return pruner
