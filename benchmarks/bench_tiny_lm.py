"""Perplexity of a small causal language model under weight-only int4 and 2:4 sparsity, offline.

A byte-level Llama (grouped-query attention, rotary embeddings; 4 layers, hidden 128) is trained by this script
on Python standard-library source (``*.py`` files of a fixed list of packages) and cached outside the repository
(``~/.cache/slimkit-bench/tiny_lm.pt``; delete it to retrain). Held-out text is other standard-library modules.
For float, RTN / GPTQ / AWQ at int4 group 128 and 32, and 2:4 sparsity by magnitude, Wanda and SparseGPT
(calibrated on 16 training sequences), the script reports perplexity on 64 held-out sequences of 128 bytes,
and the time and peak RSS of each compression.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_tiny_lm.py`` (writes ``benchmarks/results/tiny_lm.json``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.pruning import LevelPruner, SparseGPTPruner, WandaPruner  # noqa: E402
from slimkit.algorithms.quantization import WeightOnlyQuantizer  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("SLIMKIT_BENCH_CACHE", Path.home() / ".cache" / "slimkit-bench"))
TRAIN = ["json", "email", "http", "urllib", "logging", "unittest", "asyncio", "concurrent", "xml", "importlib"]
HELD_OUT = ["collections", "multiprocessing", "tomllib", "zoneinfo", "wsgiref", "sqlite3"]
SEQ = 128
STEPS = 600


def source_bytes(packages: list[str]) -> torch.Tensor:
    root = Path(sysconfig.get_paths()["stdlib"])
    data = bytearray()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "test" not in path.parts:
                data += path.read_bytes()
    return torch.tensor(list(data), dtype=torch.long)


def sequences(data: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - SEQ - 1, (count,), generator=g)
    return torch.stack([data[s:s + SEQ] for s in starts.tolist()])


def build() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def trained_model(train: torch.Tensor) -> torch.nn.Module:
    model = build()
    path = CACHE / "tiny_lm.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=STEPS)
    model.train()
    for step in range(STEPS):
        batch = sequences(train, 16, seed=step)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


@torch.no_grad()
def perplexity(model: torch.nn.Module, held_out: torch.Tensor) -> float:
    losses = [model(input_ids=batch, labels=batch).loss.item() for batch in held_out.split(16)]
    return math.exp(sum(losses) / len(losses))


def main() -> None:
    torch.set_num_threads(2)
    train, held = source_bytes(TRAIN), source_bytes(HELD_OUT)
    model = trained_model(train)
    evaluation = sequences(held, 64, seed=10_000)
    calibration = [{"input_ids": batch} for batch in sequences(train, 16, seed=20_000).split(8)]
    rows = {"float": {"perplexity": perplexity(model, evaluation)}}
    print(f"{'float':18s} ppl {rows['float']['perplexity']:.3f}", flush=True)
    linear = {"op_types": ["Linear"]}
    methods = {f"{a} int4 g{g}": (lambda m, a=a, g=g: WeightOnlyQuantizer(
        m, [{**linear, "quant_bits": 4, "group_size": g}], algorithm=a)) for g in (128, 32)
        for a in ("rtn", "gptq", "awq")}
    pattern = {**linear, "sparsity": 0.5, "sparsity_pattern": "2:4"}
    methods.update({f"{name} 2:4": (lambda m, cls=cls: cls(m, [pattern])) for name, cls in (
        ("magnitude", LevelPruner), ("wanda", WandaPruner), ("sparsegpt", SparseGPTPruner))})
    for label, make in methods.items():
        candidate = copy.deepcopy(model)
        start = time.perf_counter()
        compressor = make(candidate)
        if not label.startswith(("rtn", "magnitude")):
            compressor.calibrate(calibration)
        compressor.compress()
        seconds = time.perf_counter() - start
        rows[label] = {"perplexity": perplexity(candidate, evaluation), "seconds": round(seconds, 2),
                       "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        print(f"{label:18s} ppl {rows[label]['perplexity']:.3f}  {seconds:.1f} s", flush=True)
    result = {"machine": describe_machine(torch=torch.__version__), "model": "byte-level Llama, 4 layers, hidden 128,"
              " GQA 4/2 heads, trained on stdlib source", "steps": STEPS, "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "tiny_lm.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
