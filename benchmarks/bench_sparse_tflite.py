"""Sparse TFLite weights: file size and LiteRT latency of ``sparse_weights=True`` against the dense file.

MobileNetV2 (slimkit.models, width 1.0, 1000 classes, random init, 128x128 input) with every conv / linear weight
magnitude-pruned per layer to 50 / 80 / 90 % unstructured zeros; float32 and int8 (whole-graph PTQ, minmax on two
random batches) files written by ``TFLiteConverter`` dense and with ``sparse_weights=True``. For each pair: file
sizes, how many weights were encoded, whether the outputs are equal (4 random inputs), and LiteRT latency (1 thread,
median of interleaved invokes) with its default XNNPACK delegate and with the builtin kernels only
(``BUILTIN_WITHOUT_DEFAULT_DELEGATES``), plus load and first invoke (where the weights are expanded), and whether
XNNPACK's partition took the DENSIFY ops (its DELEGATE node reads the sparse constants).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_sparse_tflite.py`` (writes
``benchmarks/results/sparse_tflite.json``; ``--quick`` for a smoke run).
"""

from __future__ import annotations

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

from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from slimkit.converter import TFLiteConverter  # noqa: E402
from slimkit.models import mobilenet_v2  # noqa: E402

SPARSITIES = (0.5, 0.8, 0.9)
SIZE = 128
WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


def pruned_model(sparsity: float) -> torch.nn.Module:
    """MobileNetV2 with the smallest |w| of each conv / linear weight zeroed (BatchNorm statistics settled first)."""
    torch.manual_seed(0)
    model = mobilenet_v2(num_classes=1000)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, SIZE, SIZE))
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                w = m.weight
                k = int(sparsity * w.numel())
                threshold = w.abs().flatten().kthvalue(k).values
                w.mul_((w.abs() > threshold).float())
    return model.eval()


def int8_model(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    ptq = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=torch.randn(1, 3, SIZE, SIZE))
    ptq.compress()
    ptq.calibrate([torch.randn(4, 3, SIZE, SIZE) for _ in range(2)])
    return model.eval()


def interpreter(path: Path, delegates: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it


def densify_delegated(path: Path) -> bool | None:
    """Whether XNNPACK took every DENSIFY into its partition (the DELEGATE node reads the sparse constants, not the
    densified tensors: it expands them itself when the delegate is prepared). None: the file has no DENSIFY."""
    nodes = interpreter(path, True)._get_ops_details()
    densify = [n for n in nodes if n["op_name"] == "DENSIFY"]
    if not densify:
        return None
    delegate_inputs = {int(i) for n in nodes if n["op_name"] == "DELEGATE" for i in n["inputs"]}
    return all(int(n["inputs"][0]) in delegate_inputs and int(n["outputs"][0]) not in delegate_inputs
               for n in densify)


def run(it, x: np.ndarray) -> np.ndarray:
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def latencies(paths: dict[str, Path], x: np.ndarray, delegates: bool, rounds: int) -> dict[str, dict]:
    """Load + first invoke, then the median steady-state invoke, the files interleaved round by round."""
    out, its = {}, {}
    for name, path in paths.items():
        start = time.perf_counter()
        its[name] = interpreter(path, delegates)
        run(its[name], x)
        out[name] = {"load_and_first_invoke_ms": 1000 * (time.perf_counter() - start), "times": []}
    for _ in range(rounds):
        for name, it in its.items():
            start = time.perf_counter()
            run(it, x)
            out[name]["times"].append(1000 * (time.perf_counter() - start))
    for entry in out.values():
        entry["median_ms"] = statistics.median(entry.pop("times"))
    return out


def measure(model: torch.nn.Module, kind: str, sparsity: float, folder: Path, rounds: int) -> dict:
    x = torch.randn(1, 3, SIZE, SIZE)
    paths = {"dense": folder / f"{kind}_{sparsity}_dense.tflite", "sparse": folder / f"{kind}_{sparsity}_sparse.tflite"}
    encoded = 0
    for name, path in paths.items():
        conv = TFLiteConverter(model, x, path, sparse_weights=name == "sparse")
        conv.convert()
        encoded = sum(op.code == "DENSIFY" for op in conv.graph.ops) if name == "sparse" else encoded
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, SIZE, SIZE, 3)).astype(np.float32) for _ in range(4)]
    equal = all(np.array_equal(run(interpreter(paths["dense"], True), v), run(interpreter(paths["sparse"], True), v))
                for v in inputs)
    row = {"kind": kind, "sparsity": sparsity, "weights_encoded": encoded, "outputs_equal": equal,
           "dense_bytes": paths["dense"].stat().st_size, "sparse_bytes": paths["sparse"].stat().st_size,
           "xnnpack_takes_densify": densify_delegated(paths["sparse"])}
    for delegates in (True, False):
        label = "xnnpack" if delegates else "builtin"
        for name, entry in latencies(paths, inputs[0], delegates, rounds).items():
            for key, value in entry.items():
                row[f"{label}_{name}_{key}"] = round(value, 2)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    quick = "--quick" in sys.argv
    rounds = 5 if quick else 30
    import ai_edge_litert

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in SPARSITIES[:1] if quick else SPARSITIES:
            model = pruned_model(sparsity)
            rows.append(measure(model, "float32", sparsity, Path(tmp), rounds))
            rows.append(measure(int8_model(model), "int8", sparsity, Path(tmp), rounds))
    result = {"machine": describe_machine(torch=torch.__version__, ai_edge_litert=ai_edge_litert.__version__),
              "model": f"mobilenet_v2(1000 classes), {SIZE}x{SIZE}", "rows": rows}
    if not quick:
        (HERE / "results" / "sparse_tflite.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
