"""Why Wanda 2:4 on the real all-MiniLM-L6-v2 stays below half of magnitude 2:4's gap: its calibration choices
measured one at a time.

Same model, sentences and figures as ``bench_weight_only.py`` (mean cosine of sentence embeddings to float over
256 evaluation sentences, nearest-neighbour agreement); every variant prunes the 36 Linear layers 2:4 with
Wanda's score ``|W_ij| * ||X_j||_2`` compared within each group of four inputs of one output row:

- ``sequential`` (with ``--all``; ``bench_weight_only.py`` measures it too): slimkit's ``WandaPruner`` as
  shipped: each layer's input norms from the model with the layers before it already pruned, 256 calibration
  sentences padded to 32 tokens.
- ``dense statistics``: every layer's norms from the unpruned model (one pass), as pruning all layers at once.
- ``no padding``: the same 256 sentences, each its own batch at its own length, so padding positions (masked in
  attention but still passing through the Linear layers) add nothing to the norms.
- ``more sentences``: every corpus sentence not evaluated (padded to 32), sequential.
- ``64 tokens`` (with ``--all``): the 256 sentences padded to 64 tokens, sequential.

Magnitude 2:4 is measured beside them (SparseGPT 2:4: ``bench_weight_only.py``). Run: ``PYTHONPATH=. .venv/bin/python
benchmarks/bench_wanda_2of4.py`` (writes ``benchmarks/results/wanda_2of4.json``).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_minilm import batches, embed, real_minilm, scores  # noqa: E402
from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.pruning import LevelPruner, WandaPruner  # noqa: E402
from tests.realmodels.minilm import PAD_ID, token_ids  # noqa: E402

CALIBRATE, EVALUATE = 256, 256
CONFIG = [{"sparsity": 0.5, "sparsity_pattern": "2:4", "op_types": ["Linear"]}]


class DenseStatisticsWanda(WandaPruner):
    """Wanda with every layer's input norms taken from the unpruned model before any mask."""

    def compress(self):
        from slimkit.frameworks.torch.layer_inputs import InputStatistics, _call

        stats, handles = {}, []
        for layer in self.layers:
            stats[layer.name] = InputStatistics(self.matrix(layer).shape[1], gram=False)
            handles.append(layer.module.register_forward_pre_hook(
                lambda module, args, s=stats[layer.name]: s.add(args[0])))
        with torch.no_grad():
            for batch in self.batches:
                _call(self.model, batch)
        for handle in handles:
            handle.remove()
        self._dense = stats
        return super().compress()

    def input_statistics(self, layer, hooked, gram=True):
        return self._dense[layer.name]


def unpadded(text: str) -> torch.Tensor:
    """One sentence's token ids (truncated to 32) without padding: a (1, length) batch."""
    ids = token_ids([text])
    return ids[:, :int((ids != PAD_ID).sum())]


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, texts, calibration, evaluation, reference = real_minilm(CALIBRATE, EVALUATE)
    rest = texts[:CALIBRATE] + texts[CALIBRATE + EVALUATE:]
    variants = {
        "magnitude": (LevelPruner, None),
        "wanda no padding": (WandaPruner, [unpadded(text) for text in texts[:CALIBRATE]]),
        "wanda dense statistics": (DenseStatisticsWanda, calibration),
        "wanda more sentences": (WandaPruner, batches(rest)),
    }
    if "--all" in sys.argv:
        variants["wanda sequential"] = (WandaPruner, calibration)
        variants["wanda 64 tokens"] = (WandaPruner, [token_ids(texts[i:i + 16], length=64)
                                                     for i in range(0, CALIBRATE, 16)])
    rows = {}
    for label, (cls, data) in variants.items():
        candidate = copy.deepcopy(model)
        start = time.perf_counter()
        pruner = cls(candidate, CONFIG)
        if data is not None:
            pruner.calibrate(data)
        pruner.compress()
        rows[label] = {**scores(embed(candidate, evaluation), reference),
                       "seconds": round(time.perf_counter() - start, 1),
                       "calibration_sentences": len(rest) if label == "wanda more sentences" else CALIBRATE}
        print(f"{label:26s} {rows[label]}", flush=True)
    floor = rows["magnitude"]["mean_cosine"]
    for row in rows.values():
        row["gap_closed"] = round((row["mean_cosine"] - floor) / (1 - floor), 3)
    result = {"machine": describe_machine(torch=torch.__version__), "rows": rows,
              "target_mean_cosine": round(floor + (1 - floor) / 2, 4)}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "wanda_2of4.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["machine"]))


if __name__ == "__main__":
    main()
