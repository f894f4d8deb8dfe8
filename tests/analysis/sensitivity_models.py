"""A model with one robust and one fragile layer, and its evaluation (loaded by the CLI test by name)."""

from __future__ import annotations

import torch
from torch import nn

INPUT = torch.arange(1.0, 9.0).reshape(2, 4)


class TwoLayers(nn.Module):
    """``fragile(robust(x))``: ``robust`` is the identity (12 of 16 weights are zero, so pruning up to
    75% of it by magnitude removes only zeros); ``fragile`` is all ones (every weight matters)."""

    def __init__(self):
        super().__init__()
        self.robust = nn.Linear(4, 4, bias=False)
        self.fragile = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.robust.weight.copy_(torch.eye(4))
            self.fragile.weight.fill_(1.0)

    def forward(self, x):
        return self.fragile(self.robust(x))


def two_layers() -> TwoLayers:
    return TwoLayers()


REFERENCE = TwoLayers()(INPUT).detach()


def unchanged_outputs(model) -> float:
    """Fraction of the outputs equal to the unpruned model's (1.0 = untouched)."""
    with torch.no_grad():
        return float(torch.isclose(model(INPUT), REFERENCE).float().mean())
