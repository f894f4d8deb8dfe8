"""(a) Training-step time of a masked ResNet-18 (L1 filter pruning, 50%) against the plain model.

Batch 32 at 64x64 on CPU. Plain and wrapped steps are interleaved so that load from other jobs on
the machine hits both alike; the figure is the ratio of the medians. Both wall-clock time and the
process's CPU time are recorded: on a loaded shared machine the CPU time (with ``--threads 1``) is
the stable measure of the work a step does. Target: <= 1.10.

Run:  PYTHONPATH=.:benchmarks python benchmarks/pruning_wrapper_overhead.py [--steps 15] [--threads 1]
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
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = resnet18(num_classes=10)
    wrapped = copy.deepcopy(plain)
    pruner = L1FilterPruner(wrapped, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    steps = {"plain": make_step(plain, x, y), "wrapped": make_step(wrapped, x, y, pruner)}
    for step in steps.values():  # warm-up
        step(), step()
    wall: dict[str, list[float]] = {"plain": [], "wrapped": []}
    cpu: dict[str, list[float]] = {"plain": [], "wrapped": []}
    for i in range(args.steps):
        order = ("plain", "wrapped") if i % 2 == 0 else ("wrapped", "plain")
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    wall_median = {name: statistics.median(values) for name, values in wall.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    wall_ratio = wall_median["wrapped"] / wall_median["plain"]
    cpu_ratio = cpu_median["wrapped"] / cpu_median["plain"]
    name = f"pruning_wrapper_overhead_threads{torch.get_num_threads()}"
    path = write(name, {
        "setup": "ResNet-18, batch 32, 3x64x64, SGD momentum, L1FilterPruner 50% on all Conv2d, CPU",
        "steps": args.steps, "threads": torch.get_num_threads(), "median_wall_s": wall_median,
        "median_cpu_s": cpu_median, "wall_ratio": wall_ratio, "cpu_ratio": cpu_ratio, "target_ratio": 1.10,
        "all_wall_s": wall, "all_cpu_s": cpu})
    print(f"threads {torch.get_num_threads()}: wall plain {wall_median['plain'] * 1e3:.0f} ms, wrapped "
          f"{wall_median['wrapped'] * 1e3:.0f} ms, ratio {wall_ratio:.3f}; "
          f"CPU plain {cpu_median['plain'] * 1e3:.0f} ms, "
          f"wrapped {cpu_median['wrapped'] * 1e3:.0f} ms, ratio {cpu_ratio:.3f} (target <= 1.10) -> {path}")


if __name__ == "__main__":
    main()
