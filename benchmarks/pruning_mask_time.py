"""(b) Mask computation time for all 53 convolutions of a ResNet-50, L1 and FPGM. Target: <= 0.2 s.

``compute`` times ``calc_mask`` over every layer (the algorithm: reading the masked weights, ranking,
building the masks); ``update_masks`` adds installing them (the core's mask validation and the
copy into the wrappers' buffers). Median of several runs after a warm-up.

FPGM's Gram matrices are BLAS work (about 9.7 GMAC for ResNet-50 with a symmetric rank-k update);
on an oversubscribed machine OpenBLAS's threads spin against each other, so the script is also run
with ``OPENBLAS_NUM_THREADS=1`` (results file ``pruning_mask_time_blas1.json``).

Run:  PYTHONPATH=.:benchmarks python benchmarks/pruning_mask_time.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os

import torch
from pruning_common import median_time, write

from slimkit.algorithms.pruning import FPGMPruner, L1FilterPruner
from slimkit.models import resnet50


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = resnet50()
    results = {}
    for cls in (L1FilterPruner, FPGMPruner):
        pruner = cls(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
        pruner.compress()

        def compute(pruner=pruner) -> None:
            for layer in pruner.layers:
                pruner.calc_mask(layer, layer.config)

        compute_s, compute_all = median_time(compute, args.repeats)
        update_s, update_all = median_time(pruner.update_masks, args.repeats)
        results[cls.__name__] = {"layers": len(pruner.layers), "compute_median_s": compute_s,
                                 "update_masks_median_s": update_s, "compute_all_s": compute_all,
                                 "update_masks_all_s": update_all}
        pruner.unwrap_model()
        print(f"{cls.__name__}: {len(pruner.layers)} convs, masks computed in {compute_s:.3f} s "
              f"(update_masks incl. installing: {update_s:.3f} s), target <= 0.2 s")
    blas = os.environ.get("OPENBLAS_NUM_THREADS")
    name = "pruning_mask_time" + (f"_blas{blas}" if blas else "")
    print("->", write(name, {"setup": "ResNet-50 (torchvision layout), all Conv2d, sparsity 0.5, CPU",
                             "OPENBLAS_NUM_THREADS": blas, "target_s": 0.2, "results": results}))


if __name__ == "__main__":
    main()
