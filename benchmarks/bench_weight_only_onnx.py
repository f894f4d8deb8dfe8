"""onnxruntime latency of weight-only int4 MiniLM: MatMulNBits vs blocked DequantizeLinear vs the float model.

The real all-MiniLM-L6-v2 sentence encoder (``tests/realmodels/minilm.py``), its 36 Linear layers quantized to int4
(round to nearest, symmetric, group 128 and 32) by ``WeightOnlyQuantizer`` and exported by ``export_model`` in both
ONNX formats (which export without the exporter's graph optimizer); the float model exported by
``torch.onnx.export`` (dynamo, opset 21) with its optimizer (as users get it) and without (as the int4 files).
For each file: its size (with external data), the largest difference of its sentence embeddings from the PyTorch
model it came from (float files: the float model; int4 files: the weight-only model) over 64 real sentences, and
the median latency of one forward in onnxruntime's CPU provider (all graph optimizations, one intra-op thread:
the machine is shared) at batch 1 and batch 16 of 32 tokens, the files' runs interleaved so load changes hit
them alike.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_weight_only_onnx.py`` (writes
``benchmarks/results/weight_only_onnx.json``).
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.quantization import WeightOnlyQuantizer  # noqa: E402
from slimkit.frameworks.torch.weight_only_onnx import OPSET  # noqa: E402
from tests.realmodels.minilm import corpus, load_encoder, token_ids  # noqa: E402

SHAPES = {"batch 1": (1, 32), "batch 16": (16, 32)}
REPEATS = 40


def session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, ids: torch.Tensor) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: ids.numpy()})[0]


def export_float(model, example, path: Path, optimize: bool) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=OPSET, verbose=False,
                          optimize=optimize)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    float_model = load_encoder().eval()
    texts = corpus()
    evaluation = [token_ids(texts[i:i + 16]) for i in range(0, 64, 16)]
    folder = Path(tempfile.mkdtemp())
    rows: dict[str, dict] = {}
    for label, shape in SHAPES.items():
        example = evaluation[0][:shape[0]]
        files = {"float": (float_model, folder / f"float_{shape[0]}.onnx"),
                 "float, unoptimized export": (float_model, folder / f"float_plain_{shape[0]}.onnx")}
        export_float(float_model, example, files["float"][1], optimize=True)
        export_float(float_model, example, files["float, unoptimized export"][1], optimize=False)
        for group in (128, 32):
            model = load_encoder().eval()
            q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "quant_bits": 4, "group_size": group}])
            model = q.compress()
            for fmt in ("DequantizeLinear", "MatMulNBits"):
                path = folder / f"int4_g{group}_{fmt}_{shape[0]}.onnx"
                q.export_model(folder / "weights.pth", onnx_path=path, dummy_input=example, onnx_format=fmt)
                files[f"int4 g{group} {fmt}"] = (model, path)
        sessions = {name: session(path) for name, (_, path) in files.items()}
        for name, (model, path) in files.items():
            with torch.no_grad():
                diff = max(float(np.abs(run(sessions[name], ids[:shape[0]]) - model(ids[:shape[0]]).numpy()).max())
                           for ids in evaluation)
            size = sum(part.stat().st_size for part in folder.glob(path.name + "*"))  # with external data
            rows.setdefault(name, {})["size_mb"] = round(size / 2 ** 20, 2)
            rows[name]["max_abs_diff_vs_pytorch"] = diff
        times: dict[str, list[float]] = {name: [] for name in files}
        inputs = evaluation[1][:shape[0]]
        for name in files:  # warm-up
            for _ in range(3):
                run(sessions[name], inputs)
        for _ in range(REPEATS):
            for name in files:
                start = time.perf_counter()
                run(sessions[name], inputs)
                times[name].append(time.perf_counter() - start)
        for name in files:
            rows[name][f"{label} ms"] = round(1000 * statistics.median(times[name]), 3)
            print(f"{label:9s} {name:30s} {rows[name]}", flush=True)
        write(rows)  # after each shape: a run stopped early keeps what it measured


def write(rows: dict) -> None:
    import onnxruntime

    result = {"machine": describe_machine(torch=torch.__version__, onnxruntime=onnxruntime.__version__),
              "threads": 1, "repeats": REPEATS, "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "weight_only_onnx.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["machine"]), flush=True)


if __name__ == "__main__":
    main()
