"""Prune a small CNN on the bundled 8x8 digits with every slimkit pruner and compare accuracies.

Trains ``DigitsCNN`` once, then for each pruner prunes a copy to 50%, fine-tunes it for a few
epochs (calling ``pruner.update_epoch(epoch)`` and ``pruner.step()`` as a training loop should),
and prints: the sparsity reached, the test accuracy right after pruning and after fine-tuning.

Run:  python examples/prune_digits.py        (about half a minute on 2 CPU cores; what ``make demo`` runs)
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.algorithms.pruning import (
    ActivationAPoZRankFilterPruner,
    ActivationMeanRankFilterPruner,
    AGPPruner,
    FPGMPruner,
    L1FilterPruner,
    L2FilterPruner,
    LevelPruner,
    LotteryTicketPruner,
    SlimPruner,
)
from slimkit.models import DigitsCNN, load_digits_tensors

SPARSITY = 0.5
BATCH = 64
WIDTH = 16
LR = 3e-3


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


class Digits:
    """The data and the training / evaluation loops shared by every pruner."""

    def __init__(self, seed: int = 0):
        self.x_train, self.y_train, self.x_test, self.y_test = load_digits_tensors(seed=seed)
        self.seed = seed

    def batches(self, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        return [(self.x_train[idx], self.y_train[idx]) for idx in order.split(BATCH)]

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable, epoch: int,
                    pruner: Any = None) -> None:
        model.train()
        for x, y in self.batches(epoch):
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
            if pruner is not None:
                pruner.step()

    @torch.no_grad()
    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        return float((model(self.x_test).argmax(dim=1) == self.y_test).float().mean())


def sparsity_of(pruner: Any) -> float:
    """Fraction of zeros over the weight masks of the pruned layers."""
    masks = [entry["weight"] for entry in pruner.get_masks().values()]
    return sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks)


CONV = [{"sparsity": SPARSITY, "op_types": ["Conv2d"]}]


def _one_shot(cls: type, config_list: list[dict] = CONV, **kwargs: Any) -> Callable:
    def make(model: nn.Module, data: Digits, optimizer: torch.optim.Optimizer) -> Any:
        pruner = cls(model, config_list, **kwargs)
        pruner.compress()
        return pruner
    return make


def _activation(cls: type) -> Callable:
    def make(model: nn.Module, data: Digits, optimizer: torch.optim.Optimizer) -> Any:
        pruner = cls(model, CONV, statistics_batch_num=4)
        pruner.compress()
        model.eval()
        with torch.no_grad():  # the statistics passes: masks are computed after the 4th
            for x, _ in data.batches(-1)[:4]:
                model(x)
        pruner.step()
        return pruner
    return make


def _slim(model: nn.Module, data: Digits, optimizer: torch.optim.Optimizer) -> Any:
    def trainer(model, optimizer, criterion, epoch):  # sparsity training with the L1 penalty on BN scales
        data.train_epoch(model, optimizer, criterion, 100 + epoch)

    pruner = SlimPruner(model, [{"sparsity": SPARSITY, "op_types": ["BatchNorm2d"]}], optimizer=optimizer,
                        trainer=trainer, criterion=nn.functional.cross_entropy, sparsifying_training_epochs=2,
                        scale=1e-3)
    pruner.compress()
    return pruner


def _agp(model: nn.Module, data: Digits, optimizer: torch.optim.Optimizer) -> Any:
    config = [{"final_sparsity": SPARSITY, "start_epoch": 0, "end_epoch": 2, "op_types": ["Conv2d"]}]
    pruner = AGPPruner(model, config, optimizer=optimizer, pruning_algorithm="l1")
    pruner.compress()
    return pruner


def _lottery(initial: nn.Module) -> Callable:
    def make(model: nn.Module, data: Digits, optimizer: torch.optim.Optimizer) -> Any:
        trained = copy.deepcopy(model.state_dict())
        model.load_state_dict(initial.state_dict())  # the winning-ticket initialisation
        pruner = LotteryTicketPruner(model, [{"sparsity": SPARSITY, "prune_iterations": 1, "op_types": ["Conv2d"]}],
                                     optimizer=optimizer)
        pruner.compress()
        pruner.prune_iteration_start()  # round 0: the dense training, which is the base model's
        pruner.unwrap_model()
        model.load_state_dict(trained)
        pruner.compress()
        pruner.prune_iteration_start()  # round 1: prune the trained weights, rewind to the initialisation
        return pruner
    return make


def pruners(initial: nn.Module) -> dict[str, Callable]:
    """name -> make(model, data, optimizer) returning a compressed pruner."""
    return {
        "level": _one_shot(LevelPruner, [{"sparsity": SPARSITY, "op_types": ["Conv2d", "Linear"]}]),
        "l1": _one_shot(L1FilterPruner),
        "l2": _one_shot(L2FilterPruner),
        "fpgm": _one_shot(FPGMPruner),
        "apoz": _activation(ActivationAPoZRankFilterPruner),
        "mean_activation": _activation(ActivationMeanRankFilterPruner),
        "slim": _slim,
        "agp (l1)": _agp,
        "lottery": _lottery(initial),
    }


def train_base(data: Digits, epochs: int) -> tuple[nn.Module, nn.Module]:
    """The trained model and a copy of its initialisation."""
    seed_everything(data.seed)
    model = DigitsCNN(width=WIDTH)
    initial = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for epoch in range(epochs):
        data.train_epoch(model, optimizer, nn.functional.cross_entropy, epoch)
    return model, initial


def fine_tune(model: nn.Module, pruner: Any, data: Digits, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    for epoch in range(epochs):
        pruner.update_epoch(epoch)
        data.train_epoch(model, optimizer, nn.functional.cross_entropy, 1000 + epoch, pruner)


def prune_and_tune(name: str, make: Callable, base: nn.Module, data: Digits, finetune_epochs: int) -> dict[str, Any]:
    """Prune a copy of ``base`` with ``make`` and fine-tune it; one row of the table."""
    seed_everything(data.seed + 1)
    start = time.perf_counter()
    model = copy.deepcopy(base)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    pruner = make(model, data, optimizer)
    before = data.accuracy(model)
    fine_tune(model, pruner, data, optimizer, finetune_epochs)
    return {"pruner": name, "sparsity": sparsity_of(pruner), "before": before, "after": data.accuracy(model),
            "seconds": time.perf_counter() - start}


def run(base_epochs: int = 10, finetune_epochs: int = 4, seed: int = 0) -> tuple[list[dict[str, Any]], nn.Module,
                                                                               Digits]:
    """The table's rows, the trained dense model and the data (``seed``: split, initialisation, batch order)."""
    data = Digits(seed)
    base, initial = train_base(data, base_epochs)
    rows = [{"pruner": "dense (no pruning)", "sparsity": 0.0, "before": data.accuracy(base),
             "after": data.accuracy(base), "seconds": 0.0}]
    for name, make in pruners(initial).items():
        rows.append(prune_and_tune(name, make, base, data, finetune_epochs))
    return rows, base, data


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'pruner':<22} {'sparsity':>8} {'acc pruned':>10} {'acc tuned':>9} {'time s':>7}")
    for row in rows:
        print(f"{row['pruner']:<22} {row['sparsity']:>8.1%} {row['before']:>10.1%} {row['after']:>9.1%} "
              f"{row['seconds']:>7.1f}")
    print("(agp starts dense and reaches 50% during fine-tuning; lottery rewinds to the initialisation)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a 16-channel CNN on 8x8 images: extra threads only add synchronisation
    start = time.perf_counter()
    rows, _, _ = run(args.base_epochs, args.finetune_epochs)
    print_table(rows)
    print(f"\nAll layers pruned to {SPARSITY:.0%} (filter pruners: output channels; slim: BatchNorm channels; "
          f"level / lottery: weights). Total {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
