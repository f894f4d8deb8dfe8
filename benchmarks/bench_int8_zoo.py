"""Int8 exactness over slimkit's structure zoo (issue 13): every structure of ``tests/int8zoo/structures.py``,
post-training quantized (minmax, random init) and QAT-trained (a few steps on the digits), converted to int8 and run in
LiteRT (XNNPACK), compared with ``quantizer.emulate_integer()`` element for element
-> benchmarks/results/int8_zoo.json and benchmarks/RESULTS_int8_zoo.md.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_int8_zoo.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import inspect
import json
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_info import describe_machine  # noqa: E402

from slimkit.frameworks.torch.int8_emulation import EMULATED_OPS, EXACT_OPS  # noqa: E402
from slimkit.utils.litert import delegate_partitions  # noqa: E402
from tests.int8zoo.harness import MODES, float_boundaries, measure  # noqa: E402
from tests.int8zoo.structures import STRUCTURES  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(2)


def run() -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name, structure in STRUCTURES.items():
            for mode in MODES:
                start = time.perf_counter()
                result = measure(name, mode, directory)
                path = Path(directory) / f"{name}_{mode}.tflite"
                partitions, undelegated = delegate_partitions(model_path=str(path), num_threads=2)
                rows.append({"structure": name, "doc": summary(structure.factory), "mode": mode,
                             "outputs": result.outputs, "exact": result.exact, "fraction": result.fraction,
                             "max_steps": result.max_steps, "ops": list(result.ops),
                             "float_ops": list(result.float_ops), "edges_only": not float_boundaries(path),
                             "partitions": partitions, "undelegated": sorted(set(undelegated)),
                             "seconds": round(time.perf_counter() - start, 2)})
                print(f"{name:22s} {mode} {result.exact}/{result.outputs} max {result.max_steps}", flush=True)
    import ai_edge_litert

    return {"machine": describe_machine(torch=torch.__version__,
                                        ai_edge_litert=getattr(ai_edge_litert, "__version__", "unknown")),
            "rows": rows, "ops": per_op(rows)}


#: why a structure's file keeps float ops (LiteRT / XNNPACK have no int8 kernel for them)
WHY_FLOAT = {
    "lstm": "no int8 LSTM kernel (sequence LSTM in float)",
    "gru": "no int8 GRU kernel (the cell unrolled in float)",
    "transformer": "LayerNorm's statistics (no int8 RSQRT / variance)",
    "gqa_attention": "F.scaled_dot_product_attention's masked scores (float SELECT_V2 / SOFTMAX)",
    "hardswish_mobile": "F.hardsigmoid (ADD 3, RELU6, MUL 1/6: no int8 HARD_SIGMOID)",
}


def summary(factory: object) -> str:
    """The first paragraph of a structure's docstring, on one line."""
    return " ".join(inspect.cleandoc(factory.__doc__ or "").split("\n\n")[0].split())


def per_op(rows: list[dict]) -> dict:
    """Op -> how many structure files (both modes) hold it, how many of those are exact, their worst step."""
    table: dict[str, dict] = defaultdict(lambda: {"files": 0, "exact_files": 0, "outputs": 0, "exact": 0,
                                                  "max_steps": 0})
    for row in rows:
        for op in row["ops"]:
            entry = table[op]
            entry["files"] += 1
            entry["exact_files"] += row["exact"] == row["outputs"]
            entry["outputs"] += row["outputs"]
            entry["exact"] += row["exact"]
            entry["max_steps"] = max(entry["max_steps"], row["max_steps"])
    for op, entry in table.items():
        entry["emulation"] = "computed" if op in EMULATED_OPS else "exact as fake quant" if op in EXACT_OPS else \
            "fake quant (approximate)"
    return dict(sorted(table.items()))


def markdown(out: dict) -> str:
    machine = out["machine"]
    rows = out["rows"]
    by_name: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        by_name[row["structure"]][row["mode"]] = row
    exact = [name for name, modes in by_name.items() if all(r["exact"] == r["outputs"] for r in modes.values())]
    edges = [name for name, modes in by_name.items() if all(r["edges_only"] for r in modes.values())]
    whole = [name for name, modes in by_name.items() if all(r["partitions"] == 1 for r in modes.values())]
    lines = [
        "# Int8 exactness over the structure zoo (issue 13)",
        "",
        "Script: `benchmarks/bench_int8_zoo.py`; structures: `tests/int8zoo/structures.py` (tested by",
        "`tests/int8zoo/test_int8_zoo.py`). Each structure is quantized whole-graph (`op_types: ['default']`,",
        "`quant_types: ['input', 'weight', 'output']`) twice: `PostTrainingQuantizer(algorithm='minmax')` on its",
        "random init (BatchNorm statistics from 64 digits), calibrated on 4 x 32 training digits; and `QATQuantizer`",
        "after 12 Adam steps on the digits (batch 32). Converted by `TFLiteConverter`, run in LiteRT (XNNPACK, the",
        "default), and compared with `quantizer.emulate_integer()` on 4 batches of 8 (three of test digits, one of",
        "digits plus noise outside the calibrated range): 32 inputs x 10 logits = 320 outputs per file. Steps: the",
        "absolute difference divided by the output's scale.",
        "",
        f"**Machine**: {machine['nproc']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"torch {machine['torch']}, ai-edge-litert {machine['ai_edge_litert']}; load average "
        f"{machine['load_average']}. {machine['note']}.",
        "",
        f"**Exact (0 steps on 100 % of outputs, both modes): {len(exact)} of {len(by_name)} structures.**",
        "",
        f"QUANTIZE / DEQUANTIZE only at the file's edges (both modes): {len(edges)} of {len(by_name)} structures (the "
        f"others keep a deliberate float island, column 'why float'); one XNNPACK partition: {len(whole)} of "
        f"{len(by_name)}.",
        "",
        "## Per structure",
        "",
        "Int8 ops: the file's ops on int8 tensors (QUANTIZE / DEQUANTIZE aside); float ops: the ops that touch no",
        "integer activation, left in float between a DEQUANTIZE and a QUANTIZE (each is deliberate: why in the last",
        "column). They agree here, but only correctly rounded ops are guaranteed to: LiteRT's MEAN, RSQRT, SOFTMAX,",
        "LOGISTIC and recurrent kernels differ from PyTorch's in float32 bits (RESULTS_float_islands.md), so",
        "`verify()` names such layers (`float_layers`). Edges only: the file quantizes only its inputs and",
        "dequantizes only its outputs (both modes). Partitions: XNNPACK delegate partitions (PTQ / QAT), with the ops",
        "XNNPACK leaves to LiteRT's own kernels.",
        "",
        "| structure | what it exercises | PTQ exact | PTQ max steps | QAT exact | QAT max steps | int8 ops "
        "| float ops | edges only | partitions | why float |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, modes in by_name.items():
        ptq, qat = modes["ptq"], modes["qat"]
        ops = sorted((set(ptq["ops"]) | set(qat["ops"])) - {"QUANTIZE", "DEQUANTIZE"})
        floats = sorted(set(ptq["float_ops"]) | set(qat["float_ops"]))
        edges = "yes" if ptq["edges_only"] and qat["edges_only"] else "no"
        refused = sorted(set(ptq["undelegated"]) | set(qat["undelegated"]))
        parts = f"{ptq['partitions']} / {qat['partitions']}" + (f" ({', '.join(refused)})" if refused else "")
        why = WHY_FLOAT.get(name, "-") if floats else "-"
        lines.append(f"| {name} | {ptq['doc']} | {100 * ptq['fraction']:.1f} % | {ptq['max_steps']} | "
                     f"{100 * qat['fraction']:.1f} % | {qat['max_steps']} | {', '.join(ops)} | "
                     f"{', '.join(floats) or '-'} | {edges} | {parts} | {why} |")
    lines += [
        "",
        "## Per op",
        "",
        "Files (of the zoo's two per structure) whose int8 ops include the op, how many of them equal the emulation",
        "on every output, the share of their outputs that are equal, the worst step, and how the emulation treats the",
        "op (`computed`: the kernel's integer arithmetic; `exact as fake quant`: the op only moves integers; otherwise",
        "fake quantization, within about a step).",
        "",
        "| op | files | exact files | exact outputs | max steps | emulation |",
        "|---|---|---|---|---|---|",
    ]
    for op, entry in out["ops"].items():
        lines.append(f"| {op} | {entry['files']} | {entry['exact_files']} | "
                     f"{100 * entry['exact'] / entry['outputs']:.1f} % | {entry['max_steps']} | {entry['emulation']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--markdown-only" in sys.argv:  # rewrite the page from the last results
        out = json.loads((ROOT / "benchmarks" / "results" / "int8_zoo.json").read_text())
        (ROOT / "benchmarks" / "RESULTS_int8_zoo.md").write_text(markdown(out))
        return
    out = run()
    (ROOT / "benchmarks" / "results" / "int8_zoo.json").write_text(json.dumps(out, indent=2) + "\n")
    (ROOT / "benchmarks" / "RESULTS_int8_zoo.md").write_text(markdown(out))


if __name__ == "__main__":
    main()
