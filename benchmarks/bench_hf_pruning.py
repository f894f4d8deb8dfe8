"""Structural pruning of Hugging Face ``transformers`` models at ratio 0.5: slimkit beside torch-pruning.

Run: ``python benchmarks/bench_hf_pruning.py [model ...] [--tools tool,...]`` (about twenty minutes on two loaded
cores; naming models reruns those, ``--tools`` only those tools on them, and the other results of the JSON file are
kept). Every (model, tool) pair runs in its own
process (clean first-call costs; a tool that hangs is stopped after ``TIMEOUT`` seconds and
recorded as such). Writes ``benchmarks/results/hf_pruning.json`` and ``benchmarks/RESULTS_hf.md``.

- slimkit: ``L1FilterPruner(..., [{'sparsity': 0.5, 'op_types': ['Conv2d', 'Linear']}], dependency_aware=True)``
  then ``ModelSpeedup``: filters (with their BatchNorm), MLP hidden channels, whole attention heads (grouped-query
  aware) and the hidden size where the residual stream is made only of layers slimkit masks (linear layers,
  embeddings, LayerNorm); the output equals the masked model (checked).
- torch-pruning 1.6: ``MetaPruner`` with L1 magnitude importance, ``pruning_ratio=0.5``, attention heads
  declared (``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``, ``head_pruning_ratio=0.5``)
  and the output head ignored, in two scopes: ``full`` (its default: the hidden size too, through the
  embeddings and norms) and ``heads+mlp`` (the embeddings ignored, so the hidden size stays: slimkit's scope).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_speedup import latency_ms  # noqa: E402
from machine_info import describe_machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "hf_pruning.json"
MARKDOWN = ROOT / "benchmarks" / "RESULTS_hf.md"
TIMEOUT = 600
TOOLS = ("slimkit", "torch_pruning:full", "torch_pruning:heads+mlp")
MODELS = ("bert", "vit", "llama", "convnext", "resnet", "resnet50", "bert_medium")


def build(name: str):
    """``(model, example)``: the zoo's tiny configs, slimkit's ResNet-50 (torchvision-free) at 224x224, and a
    BERT of 4 layers x 384 wide on 128 tokens, big enough for compute to dominate its latency."""
    import torch

    if name == "resnet50":
        from slimkit.models import resnet50

        torch.manual_seed(0)
        return resnet50().eval(), torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    from tests.hf_zoo import HF_ARCHS, MainOutput

    if name == "bert_medium":
        import transformers

        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=1000, hidden_size=384, num_hidden_layers=4, num_attention_heads=6,
                                         intermediate_size=1536, max_position_embeddings=128)
        model = MainOutput(transformers.BertForSequenceClassification(config), "logits").eval()
        return model, torch.randint(0, 1000, (1, 128), generator=torch.Generator().manual_seed(0))
    return HF_ARCHS[name]()


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def slimkit_prune(model, x) -> dict:
    from slimkit.algorithms.pruning import L1FilterPruner
    from slimkit.speedup import ModelSpeedup

    start = time.perf_counter()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}], dependency_aware=True,
                            dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    masked = time.perf_counter()
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    end = time.perf_counter()
    return {"masks_s": masked - start, "speedup_s": end - masked, "total_s": end - start,
            "max_relative_error": report.max_relative_error}


def _attention_heads(model) -> tuple[dict, list]:
    """torch-pruning's ``num_heads``: query / key / value projections of every attention module."""
    import torch

    num_heads, modules = {}, []
    for module in model.modules():
        for names in (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin")):
            projections = [getattr(module, n, None) for n in names]
            if not all(isinstance(p, torch.nn.Linear) for p in projections):
                continue
            config = getattr(module, "config", None)
            heads = next(getattr(o, a) for o in (module, config) for a in ("num_attention_heads", "num_heads",
                                                                          "n_heads") if hasattr(o, a))
            kv_heads = getattr(config, "num_key_value_heads", None) or heads
            num_heads.update({projections[0]: heads, projections[1]: kv_heads, projections[2]: kv_heads})
            modules.append(module)
    return num_heads, modules


def tp_prune(model, x, scope: str) -> dict:
    import torch
    import torch_pruning as tp

    num_heads, _ = _attention_heads(model)
    ignored = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and ("classifier" in n or n.rpartition(".")[2] in ("lm_head", "fc"))]
    if scope == "heads+mlp":
        ignored += [m for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Embedding) or n.endswith("patch_embeddings.projection")]
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=ignored, num_heads=num_heads, prune_num_heads=bool(num_heads),
                                  prune_head_dims=False, head_pruning_ratio=0.5 if num_heads else 0.0)
    pruner.step()
    return {"total_s": time.perf_counter() - start}


def case(tool: str, name: str) -> dict:
    """One tool on one model, twice (first call of the process, then warm), and the pruned model's latency."""
    import torch

    torch.set_num_threads(2)
    runs = []
    for _ in range(2):
        model, x = build(name)
        before = params(model)
        run = slimkit_prune(model, x) if tool == "slimkit" else tp_prune(model, x, tool.split(":")[1])
        runs.append(run)
    with torch.no_grad():
        model(x)  # the pruned model still runs
    dense, _ = build(name)
    timing = {"dense_ms": float("inf"), "pruned_ms": float("inf")}
    for _ in range(2):  # interleaved: load changes on the shared machine hit both alike
        timing["dense_ms"] = min(timing["dense_ms"], latency_ms(dense, x, rounds=3, calls=3, warmup=1))
        timing["pruned_ms"] = min(timing["pruned_ms"], latency_ms(model, x, rounds=3, calls=3, warmup=1))
    return {"tool": tool, "model": name, "params_before": before, "params_after": params(model),
            "first": {k: round(v, 4) for k, v in runs[0].items()}, "warm": {k: round(v, 4) for k, v in runs[1].items()},
            "dense_ms": round(timing["dense_ms"], 3), "pruned_ms": round(timing["pruned_ms"], 3),
            "latency_gain": round(timing["dense_ms"] / timing["pruned_ms"], 2)}


def _child(tool: str, name: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    try:
        out = subprocess.run([sys.executable, __file__, tool, name], capture_output=True, text=True, env=env,
                             timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "model": name, "error": f"did not finish in {TIMEOUT} s"}
    if out.returncode:
        return {"tool": tool, "model": name, "error": out.stderr.strip().splitlines()[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(models: list[str], tools: tuple[str, ...] = TOOLS) -> None:
    import torch
    import torch_pruning
    import transformers

    machine = describe_machine(torch=torch.__version__, transformers=transformers.__version__,
                               torch_pruning=torch_pruning.__version__)
    previous = json.loads(RESULTS.read_text()) if models and RESULTS.exists() else {"runs": []}
    runs = [r for r in previous["runs"] if r["model"] not in models or r["tool"] not in tools] if models else []
    results = {"machine": machine, "earlier_machine": previous.get("machine"), "runs": runs}
    for name in models or MODELS:
        for tool in tools:
            results["runs"].append(_child(tool, name))
            print(json.dumps(results["runs"][-1]), flush=True)
    results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    MARKDOWN.write_text(markdown(results))
    print(MARKDOWN.read_text())


def _cell(run: dict, key: str, fmt: str = "{:,}") -> str:
    return "error: " + run["error"] if "error" in run else fmt.format(run[key])


def markdown(results: dict) -> str:
    m = results["machine"]
    by = {(r["model"], r["tool"]): r for r in results["runs"]}
    missing = {"error": "not run"}
    lines = ["## Structural pruning of Hugging Face models (ratio 0.5)", "",
             f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']}, transformers {m['transformers']}, "
             f"torch-pruning {m['torch_pruning']}; load average {m['load_average']} at start, "
             f"{m.get('load_average_end')} at the end. {m['note']}."
             + (f" Models not rerun come from an earlier run: {results['earlier_machine']['note']}."
                if results.get("earlier_machine") else ""), "",
             "Models: `tests/hf_zoo.py`'s tiny configs (random init), slimkit's ResNet-50 (1x3x224x224) and "
             "bert_medium (BERT, 4 layers x 384, 6 heads, 128 tokens). "
             "slimkit: dependency-aware L1 filter pruner at 0.5 on Conv2d / Linear + ModelSpeedup (whole "
             "attention heads, MLP channels, filters with their BatchNorm, and the hidden size through the "
             "embeddings, LayerNorm / RMSNorm layers and free parameters; output equal to the masked model). "
             "torch-pruning: MetaPruner, L1, ratio 0.5, heads declared, output head ignored; `full` also prunes "
             "the hidden size through embeddings and norms, `heads+mlp` keeps it.", "",
             "### Parameters after pruning", "",
             "| model | before | slimkit | torch-pruning heads+mlp | torch-pruning full |", "|---|---|---|---|---|"]
    for name in MODELS:
        ours, full, same = (by.get((name, tool), missing) for tool in TOOLS)
        lines.append(f"| {name} | {_cell(ours, 'params_before')} | {_cell(ours, 'params_after')} | "
                     f"{_cell(same, 'params_after')} | {_cell(full, 'params_after')} |")
    lines += ["", "### Run time (s): first call in a process / warm", "",
              "| model | slimkit masks + speedup | of which ModelSpeedup | torch-pruning full (build + prune) | "
              "torch-pruning heads+mlp |", "|---|---|---|---|---|"]
    for name in MODELS:
        ours, full, same = (by.get((name, tool), missing) for tool in TOOLS)

        def pair(run: dict, key: str = "total_s") -> str:
            return "error: " + run["error"] if "error" in run else f"{run['first'][key]:.2f} / {run['warm'][key]:.2f}"

        lines.append(f"| {name} | {pair(ours)} | {pair(ours, 'speedup_s')} | {pair(full)} | {pair(same)} |")
    lines += ["", "### CPU latency, batch 1, 2 threads (best of interleaved rounds, ms)", "",
              "The tiny configs run in a few milliseconds of Python overhead: their gains are noise. ResNet-50 and "
              "bert_medium are the models where compute dominates.", "",
              "| model | dense | slimkit | gain | torch-pruning full | gain | torch-pruning heads+mlp | gain |",
              "|---|---|---|---|---|---|---|---|"]
    for name in MODELS:
        cells = []
        for tool in TOOLS:
            run = by.get((name, tool), missing)
            cells += ["error", ""] if "error" in run else [f"{run['pruned_ms']}", f"{run['latency_gain']}x"]
        dense = by.get((name, "slimkit"), missing).get("dense_ms", "")
        lines.append(f"| {name} | {dense} | " + " | ".join(cells) + " |")
    lines += ["", "Reading: slimkit prunes the hidden size as one channel group (the linear layers writing the "
              "residual stream, its embeddings' columns, every LayerNorm's and RMSNorm's weight and the free "
              "parameters the stream carries masked together) and keeps the masked model's norm statistics exactly "
              "(a LayerNorm or RMSNorm over the kept channels that still divides by the full width), so it removes "
              "what torch-pruning's default removes on BERT, ViT and ConvNeXt and the sped-up output equals the "
              "masked model's. Free parameters are ViT's `cls_token` and position table (masked as "
              "`'<module>.<attribute>'` entries) and ConvNeXt's per-channel layer scale; Llama's RMSNorm, written "
              "as separate ops, is recognised by what it computes. The latency columns were measured at a load "
              "average of 13-22 on 2 cores: read them as noise except ResNet-50 / bert_medium. torch-pruning's "
              "MetaPruner did not return on Hugging Face's Llama (transformers 5) within the limit (not rerun). "
              "Timings come from a shared, heavily loaded 2-core machine."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in TOOLS:
        print(json.dumps(case(sys.argv[1], sys.argv[2])))
    elif "--tools" in sys.argv:
        at = sys.argv.index("--tools")
        main(sys.argv[1:at] + sys.argv[at + 2:], tuple(sys.argv[at + 1].split(",")))
    else:
        main(sys.argv[1:])
