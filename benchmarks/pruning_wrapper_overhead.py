"""(a) Training-step time of a masked ResNet-18 (L1 filter pruning, 50%) against the plain model.

Batch 32 at 64x64 on CPU. Plain and wrapped steps are interleaved so that load from other jobs on
the machine hits both alike; the figure is the ratio of the medians. Target: <= 1.10.

Run:  PYTHONPATH=. python benchmarks/pruning_wrapper_overhead.py [--steps 15]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from pruning_common import write
from torch import nn

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.models import resnet18


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pruner=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    plain = resnet18(num_classes=10)
    wrapped = copy.deepcopy(plain)
    pruner = L1FilterPruner(wrapped, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    steps = {"plain": make_step(plain, x, y), "wrapped": make_step(wrapped, x, y, pruner)}
    for step in steps.values():  # warm-up
        step(), step()
    times: dict[str, list[float]] = {"plain": [], "wrapped": []}
    for i in range(args.steps):
        order = ("plain", "wrapped") if i % 2 == 0 else ("wrapped", "plain")
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["wrapped"] / medians["plain"]
    path = write("pruning_wrapper_overhead", {
        "setup": "ResNet-18, batch 32, 3x64x64, SGD momentum, L1FilterPruner 50% on all Conv2d, CPU",
        "steps": args.steps, "median_step_s": medians, "ratio": ratio, "target_ratio": 1.10,
        "all_step_s": times})
    print(f"plain {medians['plain'] * 1e3:.1f} ms, wrapped {medians['wrapped'] * 1e3:.1f} ms, "
          f"ratio {ratio:.3f} (target <= 1.10) -> {path}")


if __name__ == "__main__":
    main()
