"""Prune a digits CNN by 50% of its filters, fine-tune, and make the pruning real with ModelSpeedup.

Run: ``python examples/speedup_digits.py`` (about half a minute on a laptop CPU; no download: the
digits ship with slimkit). Prints parameters, batch-1 CPU latency and test accuracy of the
dense, the masked and the sped-up model.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.models import DigitsCNN, load_digits_tensors
from slimkit.speedup import ModelSpeedup


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, pruner=None) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            optimizer.step()
            if pruner is not None:
                pruner.step()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def latencies_ms(models: list[nn.Module], x: torch.Tensor, rounds: int = 15, calls: int = 20) -> list[float]:
    """Batch-1 latency of each model: the best of ``rounds`` interleaved rounds (robust on a busy machine)."""
    best = [float("inf")] * len(models)
    with torch.no_grad():
        for model in models:
            model.eval()
            for _ in range(10):
                model(x)
        for _ in range(rounds):
            for i, model in enumerate(models):
                start = time.perf_counter()
                for _ in range(calls):
                    model(x)
                best[i] = min(best[i], (time.perf_counter() - start) / calls * 1e3)
    return best


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x_train, y_train, x_test, y_test = load_digits_tensors()
    model = DigitsCNN(width=32)
    train(model, x_train, y_train, epochs=6)
    one = x_test[:1]
    dense_model = copy.deepcopy(model)
    dense = (params(model), accuracy(model, x_test, y_test))

    config_list = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
    pruner = L1FilterPruner(model, config_list, dependency_aware=True, dummy_input=one)
    model = pruner.compress()
    train(model, x_train, y_train, epochs=3, pruner=pruner)  # fine-tune with the masks applied
    masked_accuracy = accuracy(model, x_test, y_test)
    masks = pruner.get_masks()
    model = pruner.unwrap_model()  # plain layers again; their raw weights still hold the pruned filters

    speedup = ModelSpeedup(model, one, masks)
    speedup.speedup_model()
    report = speedup.report
    pruned = (params(model), accuracy(model, x_test, y_test))
    dense_ms, pruned_ms = latencies_ms([dense_model, model], one)

    print(report)
    print(f"{'':10s} {'params':>8s} {'latency (ms)':>13s} {'accuracy':>9s}")
    print(f"{'dense':10s} {dense[0]:8d} {dense_ms:13.3f} {dense[1]:9.1%}")
    print(f"{'masked':10s} {dense[0]:8d} {'':13s} {masked_accuracy:9.1%}")
    print(f"{'sped-up':10s} {pruned[0]:8d} {pruned_ms:13.3f} {pruned[1]:9.1%}")
    print(f"params x{dense[0] / pruned[0]:.2f} smaller, latency x{dense_ms / pruned_ms:.2f} faster, "
          f"accuracy {100 * (pruned[1] - masked_accuracy):+.1f} points vs the masked model (same predictions expected)")


if __name__ == "__main__":
    main()
