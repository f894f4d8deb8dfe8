"""Speedup benchmarks: run time and peak memory of ModelSpeedup vs torch-pruning, and CPU latency gains.

Run: ``python benchmarks/bench_speedup.py`` (a few minutes). Each measurement runs in its own
process (clean peak RSS, and torch.export's one-off first-call cost is measured separately from the
warm cost). Writes ``benchmarks/results/speedup.json`` and ``benchmarks/RESULTS_speedup.md``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine_info import describe_machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "speedup.json"
MARKDOWN = ROOT / "benchmarks" / "RESULTS_speedup.md"
QUOTED_TP_GAIN = {"resnet18": 2.6, "resnet50": 2.8, "mobilenet_v2": 1.4}
TARGET_SECONDS = {"resnet50": 1.5, "mobilenet_v2": 1.0}


def _model(name: str):
    import torch

    from slimkit import models

    torch.manual_seed(0)
    return getattr(models, name)().eval(), torch.randn(1, 3, 224, 224)


def _slimkit_masks(model, x):
    from slimkit.algorithms.pruning import L1FilterPruner

    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    return masks


def case_speedup(name: str) -> dict:
    """ModelSpeedup run time: right after the dependency-aware pruner (its graph capture is reused),
    and standalone on fresh model objects (a full torch.export each time), with and without verify."""
    import torch

    from slimkit.speedup import ModelSpeedup

    torch.set_num_threads(2)
    model, x = _model(name)
    start = time.perf_counter()
    masks = _slimkit_masks(model, x)  # includes the process's first torch.export (its one-off warm-up)
    mask_seconds = time.perf_counter() - start
    state = model.state_dict()
    start = time.perf_counter()
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    after_pruner = time.perf_counter() - start
    twin, _ = _model(name)
    twin.load_state_dict(state)
    twin_masks = _slimkit_masks(twin, x)  # the same flow again, for the verify=False measurement
    start = time.perf_counter()
    twin_speedup = ModelSpeedup(twin, x, twin_masks, verify=False)
    twin_speedup.speedup_model()
    twin_report = twin_speedup.report
    after_pruner_no_verify = time.perf_counter() - start
    flow_breakdown = {k: round(v, 3) for k, v in report.timings.items()}
    error = report.max_relative_error
    runs = []
    for verify in (True, True, False, False):
        fresh, _ = _model(name)
        fresh.load_state_dict(state)
        start = time.perf_counter()
        speedup = ModelSpeedup(fresh, x, masks, verify=verify)
        speedup.speedup_model()
        report = speedup.report
        runs.append({"verify": verify, "seconds": time.perf_counter() - start,
                     "timings": {k: round(v, 3) for k, v in report.timings.items()}})
    return {"model": name, "dependency_aware_l1_masks_s": round(mask_seconds, 3),
            "after_pruner_s": round(after_pruner, 3), "after_pruner_breakdown": flow_breakdown,
            "after_pruner_no_verify_s": round(after_pruner_no_verify, 3),
            "after_pruner_no_verify_breakdown": {k: round(v, 3) for k, v in twin_report.timings.items()},
            "standalone_s": round(min(r["seconds"] for r in runs[:2]), 3),
            "standalone_no_verify_s": round(min(r["seconds"] for r in runs[2:]), 3),
            "standalone_breakdown": runs[1]["timings"], "params_before": report.params_before,
            "params_after": report.params_after, "max_relative_error": error, "peak_rss_mb": _rss_mb()}


def case_torch_pruning(name: str) -> dict:
    """torch-pruning: DependencyGraph build + prune (MetaPruner, L1 magnitude, 50% channels)."""
    import torch
    import torch_pruning as tp

    torch.set_num_threads(2)
    times = []
    for _ in range(3):
        model, x = _model(name)
        ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        start = time.perf_counter()
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                      ignored_layers=ignored)
        pruner.step()
        times.append(time.perf_counter() - start)
    return {"model": name, "first_call_s": round(times[0], 3), "warm_s": round(min(times[1:]), 3),
            "params_after": sum(p.numel() for p in model.parameters()), "peak_rss_mb": _rss_mb()}


def latency_ms(model, x, rounds: int = 7, calls: int = 5, warmup: int = 3) -> float:
    """The best of ``rounds`` mean times of ``calls`` forward passes, in ms, after ``warmup`` passes."""
    import torch

    best = float("inf")
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                model(x)
            best = min(best, (time.perf_counter() - start) / calls * 1e3)
    return best


def case_latency(name: str) -> dict:
    """Batch-1 CPU latency (2 threads, best of rounds) dense vs 50%-pruned: slimkit and torch-pruning."""
    import torch
    import torch_pruning as tp

    from slimkit.speedup import ModelSpeedup

    torch.set_num_threads(2)
    dense, x = _model(name)
    ours, _ = _model(name)
    masks = _slimkit_masks(ours, x)
    speedup = ModelSpeedup(ours, x, masks)
    speedup.speedup_model()
    report = speedup.report
    theirs, _ = _model(name)
    ignored = [m for m in theirs.modules() if isinstance(m, torch.nn.Linear)]
    tp.pruner.MetaPruner(theirs, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                         ignored_layers=ignored).step()
    theirs.eval()
    best = {"dense": float("inf"), "slimkit": float("inf"), "torch_pruning": float("inf")}
    for _ in range(3):  # interleaved, so load changes on the shared machine hit all three alike
        for key, model in (("dense", dense), ("slimkit", ours), ("torch_pruning", theirs)):
            best[key] = min(best[key], latency_ms(model, x))
    return {"model": name, "dense_ms": round(best["dense"], 2), "slimkit_ms": round(best["slimkit"], 2),
            "torch_pruning_ms": round(best["torch_pruning"], 2),
            "slimkit_gain": round(best["dense"] / best["slimkit"], 2),
            "torch_pruning_gain": round(best["dense"] / best["torch_pruning"], 2),
            "torch_pruning_quoted_gain": QUOTED_TP_GAIN[name],
            "slimkit_params": report.params_after, "dense_params": report.params_before,
            "torch_pruning_params": sum(p.numel() for p in theirs.parameters()),
            "slimkit_macs_ratio": round(report.flops_ratio, 3)}


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


CASES = {"speedup": case_speedup, "torch_pruning": case_torch_pruning, "latency": case_latency}


def _run_child(case: str, name: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, __file__, case, name], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        return {"model": name, "error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _machine() -> dict:
    import torch

    return describe_machine("shared 2-core machine used by several people at once: timings are noisy "
                            "(best-of-N reported)", torch=torch.__version__)


def main() -> None:
    results = {"machine": _machine(), "speedup": [], "torch_pruning": [], "latency": []}
    for name in ("resnet50", "mobilenet_v2"):
        results["speedup"].append(_run_child("speedup", name))
        results["torch_pruning"].append(_run_child("torch_pruning", name))
    for name in ("resnet18", "resnet50", "mobilenet_v2"):
        results["latency"].append(_run_child("latency", name))
    results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    MARKDOWN.write_text(_markdown(results))
    print(MARKDOWN.read_text())


def _markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["## Speedup", "",
             f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']}; load average {m['load_average']} at "
             f"start, {m.get('load_average_end')} at the end. {m['note']}.", "",
             "### Run time (50% of filters, dependency-aware L1 masks, input 1x3x224x224, 2 threads)", "",
             "| model | slimkit after the pruner (s) | after the pruner, verify=False (s) | slimkit standalone (s) | "
             "standalone, verify=False (s) | target (s) | peak RSS (MB) | torch-pruning build+prune first / warm (s) "
             "| torch-pruning peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for ours, theirs in zip(results["speedup"], results["torch_pruning"]):
        if "error" in ours or "error" in theirs:
            lines.append(f"| {ours['model']} | error | | | | | | | |")
            continue
        lines.append(f"| {ours['model']} | {ours['after_pruner_s']} | {ours['after_pruner_no_verify_s']} | "
                     f"{ours['standalone_s']} | "
                     f"{ours['standalone_no_verify_s']} | "
                     f"{TARGET_SECONDS[ours['model']]} | {ours['peak_rss_mb']} | {theirs['first_call_s']} / "
                     f"{theirs['warm_s']} | {theirs['peak_rss_mb']} |")
    lines += ["", "Breakdown (s) after the pruner: " + "; ".join(
        f"{r['model']}: {r.get('after_pruner_breakdown')}" for r in results["speedup"]),
        "", "Breakdown (s) standalone: " + "; ".join(
        f"{r['model']}: {r.get('standalone_breakdown')}" for r in results["speedup"]), "",
              "### CPU latency, batch 1, 2 threads, 224x224 (best of interleaved rounds)", "",
              "| model | dense (ms) | slimkit 50% (ms) | slimkit gain | torch-pruning 50% (ms) | torch-pruning gain "
              "(measured) | torch-pruning gain (quoted) | params dense / slimkit / torch-pruning |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["latency"]:
        if "error" in r:
            lines.append(f"| {r['model']} | error | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['dense_ms']} | {r['slimkit_ms']} | {r['slimkit_gain']}x | "
                     f"{r['torch_pruning_ms']} | {r['torch_pruning_gain']}x | {r['torch_pruning_quoted_gain']}x | "
                     f"{r['dense_params']:,} / {r['slimkit_params']:,} / {r['torch_pruning_params']:,} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(CASES[sys.argv[1]](sys.argv[2])))
    else:
        main()
