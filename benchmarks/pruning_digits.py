"""(c) Digits: accuracy of every slimkit pruner at 50% after fine-tuning, next to Torch-Pruning.

Runs ``examples/prune_digits.py`` (same trained DigitsCNN, same fine-tuning budget and seeds) and adds
Torch-Pruning's ``MagnitudePruner`` with ``MagnitudeImportance`` (its default p=2, 50% of the output
channels of every conv, the classifier ignored). Torch-Pruning removes the channels physically; slimkit's
pruners mask them (speedup makes them physical).

Run:  PYTHONPATH=.:benchmarks python benchmarks/pruning_digits.py
"""

from __future__ import annotations

import copy
import importlib.util
import os
import time

import torch
import torch_pruning as tp
from pruning_common import write

_EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "prune_digits.py")


def load_example():
    spec = importlib.util.spec_from_file_location("prune_digits", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_pruning_row(demo, base, data, finetune_epochs: int) -> dict:
    demo.seed_everything(data.seed + 1)
    start = time.perf_counter()
    model = copy.deepcopy(base)
    params_before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(model, data.x_train[:2], importance=tp.importance.MagnitudeImportance(),
                                       pruning_ratio=demo.SPARSITY, ignored_layers=[model.fc])
    pruner.step()
    before = data.accuracy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=demo.LR)
    for epoch in range(finetune_epochs):
        data.train_epoch(model, optimizer, torch.nn.functional.cross_entropy, 1000 + epoch)
    channels = [m.out_channels for m in (model.conv1, model.conv2, model.conv3)]
    return {"pruner": "torch-pruning magnitude", "sparsity": 1 - sum(p.numel() for p in model.parameters()) /
            params_before, "before": before, "after": data.accuracy(model), "seconds": time.perf_counter() - start,
            "conv_channels_after": channels}


def main() -> None:
    demo = load_example()
    torch.set_num_threads(1)  # a 16-channel CNN on 8x8 images: extra threads only add synchronisation
    base_epochs, finetune_epochs, seeds = 10, 4, (0, 1, 2)
    runs = {}
    for seed in seeds:
        rows, base, data = demo.run(base_epochs, finetune_epochs, seed)
        rows.append(torch_pruning_row(demo, base, data, finetune_epochs))
        print(f"seed {seed}")
        demo.print_table(rows)
        runs[seed] = rows
    summary = []
    for i, row in enumerate(runs[seeds[0]]):
        after = [runs[seed][i]["after"] for seed in seeds]
        before = [runs[seed][i]["before"] for seed in seeds]
        summary.append({"pruner": row["pruner"], "sparsity": row["sparsity"], "before_mean": sum(before) / len(seeds),
                        "after_mean": sum(after) / len(seeds), "after_min": min(after), "after_max": max(after)})
    print(f"\nmean over seeds {seeds}:")
    for row in summary:
        print(f"{row['pruner']:<24} tuned {row['after_mean']:.1%} "
              f"(min {row['after_min']:.1%}, max {row['after_max']:.1%})")
    print("(torch-pruning 'sparsity' = fraction of parameters removed, channels removed physically)")
    print("->", write("pruning_digits", {
        "setup": f"DigitsCNN(width={demo.WIDTH}) on sklearn digits, {base_epochs} base epochs (Adam lr {demo.LR}), "
                 f"50% pruning, {finetune_epochs} fine-tuning epochs, seeds {list(seeds)} (split, init, batch order)",
        "summary": summary, "runs": {str(seed): rows for seed, rows in runs.items()}}))


if __name__ == "__main__":
    main()
