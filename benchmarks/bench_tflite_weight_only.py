"""Weight-only int4 / int8 TFLite files of the real all-MiniLM-L6-v2, beside Google's ai-edge-quantizer recipes.

slimkit: ``WeightOnlyQuantizer`` (round to nearest, symmetric) on the 36 Linear layers at int4 group 32, group 128 and
per channel, and int8 per channel, then ``TFLiteConverter`` (weights as DEQUANTIZE of their INT4 / INT8 codes,
``slimkit.converter.weight_only``). ai-edge-quantizer: its recipes applied to slimkit's float file of the same model
(``dynamic_wi4_afp32``, ``dynamic_wi4b32_afp32``, ``weight_only_wi4_afp32``, ``weight_only_wi8_afp32``,
``dynamic_wi8_afp32``). ai-edge-quantizer is a benchmark peer, not a dependency: it runs in its own virtual
environment (``--aeq-python``, e.g. ``/tmp/aeq/bin/python`` after ``python -m venv /tmp/aeq &&
/tmp/aeq/bin/pip install ai-edge-quantizer``), through this same script with ``--aeq``; without it those rows say so.

Per file: size (and against the float file), whether the file's dequantized weights equal the PyTorch grid values
(slimkit files, read back with ``file_weights``), the largest difference of the file's sentence embeddings from the
PyTorch model it came from (parity), the mean cosine of its embeddings to the float model's and nearest-neighbour
agreement (``bench_minilm.scores``), and LiteRT latency (2 threads, median of 20 invokes of one 32-token sentence,
XNNPACK as LiteRT applies it by default; the files take turns, one invoke each per round, so that the shared
machine's load falls on all of them alike) with the ops XNNPACK left to LiteRT's own kernels.

Sentences: ``tests/realmodels/minilm.py: corpus``, 32 tokens; 128 evaluated, one per invoke (the files are converted
for one sentence: MiniLM's Hugging Face embeddings bake the batch size in, so ``dynamic_batch`` refuses them).

litert-torch (``--litert-torch-python .venv-litert-torch/bin/python``): ``litert_torch.convert`` of the float model,
float and with its int4 blockwise dynamic recipe at block 32 and 128 (its only int4 schemes), also run by this script
in that environment.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_tflite_weight_only.py [--aeq-python /tmp/aeq/bin/python]
[--litert-torch-python .venv-litert-torch/bin/python]``
(writes ``benchmarks/results/tflite_weight_only.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

AEQ_RECIPES = ("dynamic_wi4_afp32", "dynamic_wi4b32_afp32", "weight_only_wi4_afp32", "weight_only_wi8_afp32",
               "dynamic_wi8_afp32")
SLIMKIT = {"int4 g32": (4, 32), "int4 g128": (4, 128), "int4 per-channel": (4, -1), "int8 per-channel": (8, -1)}
LITERT_TORCH = {"float": None, "int4 b32": "BLOCKWISE_32", "int4 b128": "BLOCKWISE_128"}
EVALUATE, LATENCY_RUNS = 128, 20


def aeq_quantize(float_path: str, folder: str) -> None:
    """In ai-edge-quantizer's environment: each recipe applied to ``float_path``, written to ``folder``; prints a JSON
    line per recipe (seconds or the error)."""
    from ai_edge_quantizer import quantizer, recipe

    float_path = _unique_tensor_names(float_path, folder)
    for name in AEQ_RECIPES:
        start = time.perf_counter()
        try:
            qt = quantizer.Quantizer(float_path)
            qt.load_quantization_recipe(getattr(recipe, name)())
            qt.quantize().export_model(os.path.join(folder, f"{name}.tflite"), overwrite=True)
            print(json.dumps({"recipe": name, "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        except Exception as error:  # a peer's failure is a figure
            print(json.dumps({"recipe": name, "error": f"{type(error).__name__}: {error}"[:400]}), flush=True)


def litert_torch_convert(model_dir: str, folder: str) -> None:
    """In litert-torch's environment: MiniLM converted by ``litert_torch.convert``, float and with its int4 blockwise
    dynamic recipe (``full_dynamic_recipe(INT4, BLOCKWISE_*)``, its only int4 scheme), written to ``folder``; prints
    a JSON line per file."""
    import litert_torch
    from litert_torch.generative.quantize import quant_attrs, quant_recipes

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_minilm import batches

    import tests.realmodels.minilm as minilm

    minilm.model_dir = lambda: model_dir  # that environment lacks the weights package: the folder is given
    model = minilm.load_encoder()
    example = (batches(minilm.corpus()[:1])[0][:1],)
    for label, granularity in LITERT_TORCH.items():
        start = time.perf_counter()
        try:
            config = None if granularity is None else quant_recipes.full_dynamic_recipe(
                weight_dtype=quant_attrs.Dtype.INT4, granularity=getattr(quant_attrs.Granularity, granularity))
            edge = litert_torch.convert(model, example, quant_config=config)
            edge.export(os.path.join(folder, f"litert_torch {label}.tflite"))
            print(json.dumps({"file": label, "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        except Exception as error:  # a peer's failure is a figure
            print(json.dumps({"file": label, "error": f"{type(error).__name__}: {error}"[:400]}), flush=True)


def _unique_tensor_names(path: str, folder: str) -> str:
    """A copy of the file whose repeated tensor names get a suffix (ai-edge-quantizer requires unique names; slimkit's
    float MiniLM file repeats a few, e.g. ``layer_norm_1``), with LiteRT's own flatbuffer classes."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.ModelT.InitFromPackedBuf(f.read(), 0)
    renamed = 0
    for graph in model.subgraphs:
        seen: Counter = Counter()
        for tensor in graph.tensors:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            seen[name] += 1
            if seen[name] > 1:
                tensor.name = f"{name}__{seen[name] - 1}"
                renamed += 1
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = os.path.join(folder, "float_unique_names.tflite")
    with open(out, "wb") as f:
        f.write(builder.Output())
    print(json.dumps({"renamed_tensors": renamed}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--aeq", nargs=2, metavar=("FLOAT_FILE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--aeq-python", help="python of a virtual environment with ai-edge-quantizer installed")
    parser.add_argument("--litert-torch", nargs=2, metavar=("MODEL_DIR", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--litert-torch-python",
                        help="python of .venv-litert-torch (make .venv-litert-torch/.installed)")
    args = parser.parse_args()
    if args.aeq:
        aeq_quantize(*args.aeq)
        return
    if args.litert_torch:
        litert_torch_convert(*args.litert_torch)
        return

    import numpy as np
    import torch

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(root / "benchmarks"))
    from bench_minilm import batches, embed, scores
    from machine_info import describe_machine

    from slimkit.algorithms.quantization import WeightOnlyQuantizer
    from slimkit.converter import TFLiteConverter
    from slimkit.converter.weight_only import file_weights
    from slimkit.utils.litert import delegate_partitions, interpreter
    from tests.realmodels.minilm import corpus, load_encoder

    torch.set_num_threads(2)
    evaluation = batches(corpus()[:EVALUATE])
    sentences = [row[None] for ids in evaluation for row in ids]  # the files take one sentence: (1, 32)
    work = Path(tempfile.mkdtemp())

    interpreters: dict = {}  # row -> (interpreter, input index), kept for the latency rounds

    def run_file(path, row):
        it = interpreter(model_path=str(path), num_threads=2)
        (inp,), (out,) = it.get_input_details(), it.get_output_details()
        outputs = []
        for ids in sentences:  # int64 ids; litert-torch's file takes int32
            it.set_tensor(inp["index"], ids.numpy().astype(inp["dtype"]))
            it.invoke()
            outputs.append(it.get_tensor(out["index"]))
        interpreters[row] = (it, inp["index"])
        partitions, left = delegate_partitions(model_path=str(path), num_threads=2)
        return np.concatenate(outputs), {"xnnpack_partitions": partitions, "not_delegated": dict(Counter(left))}

    def convert(model, path) -> float:
        start = time.perf_counter()
        TFLiteConverter(model, sentences[0], path).convert()
        return round(time.perf_counter() - start, 1)

    float_model = load_encoder()
    reference = embed(float_model, evaluation)
    float_path = work / "float.tflite"
    rows: dict = {}
    seconds = convert(float_model, float_path)
    float_size = os.path.getsize(float_path)
    got, timing = run_file(float_path, "float (slimkit)")
    rows["float (slimkit)"] = {"bytes": float_size, "convert_s": seconds, **scores(got, reference),
                               "max_abs_vs_source": float(np.abs(got - reference).max()), **timing}
    print("float", rows["float (slimkit)"], flush=True)

    for label, (bits, group) in SLIMKIT.items():
        model = load_encoder()
        q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "quant_bits": bits, "group_size": group}])
        model = q.compress().eval()
        path = work / f"slimkit {label}.tflite"
        seconds = convert(model, path)
        weights = file_weights(path)
        exact = all(np.array_equal(weights[f"{name}.weight_codes"].reshape(tuple(entry["codes"].shape)),
                                   model.get_submodule(name).grid.dequantize(entry["codes"], entry["scale"],
                                                                             entry["zero_point"]).numpy())
                    for name, entry in q.quantized_weights().items())
        source = embed(model, evaluation)
        got, timing = run_file(path, f"slimkit {label}")
        size = os.path.getsize(path)
        rows[f"slimkit {label}"] = {"bytes": size, "vs_float": round(size / float_size, 4), "convert_s": seconds,
                                    "layers": len(weights), "weights_equal_pytorch_grid": exact,
                                    "max_abs_vs_source": float(np.abs(got - source).max()),
                                    "source_vs_float": scores(source, reference), **scores(got, reference), **timing}
        print(label, rows[f"slimkit {label}"], flush=True)

    if args.aeq_python:
        done = subprocess.run([args.aeq_python, __file__, "--aeq", str(float_path), str(work)], capture_output=True,
                              text=True, timeout=3600)
        reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        renamed = [r for r in reports if "renamed_tensors" in r]
        reports = [r for r in reports if "recipe" in r]
        if renamed:
            rows["float (slimkit)"]["aeq_renamed_tensors"] = renamed[0]["renamed_tensors"]
        if not reports:
            rows["ai-edge-quantizer"] = {"error": (done.stderr or done.stdout)[-600:]}
        for report in reports:
            name = f"ai-edge-quantizer {report['recipe']}"
            path = work / f"{report['recipe']}.tflite"
            if "error" in report:
                rows[name] = report
                continue
            got, timing = run_file(path, name)
            size = os.path.getsize(path)
            rows[name] = {"bytes": size, "vs_float": round(size / float_size, 4), "quantize_s": report["seconds"],
                          "max_abs_vs_source": float(np.abs(got - reference).max()), **scores(got, reference),
                          **timing}
            print(name, rows[name], flush=True)
    else:
        rows["ai-edge-quantizer"] = {"error": "not run: no --aeq-python given"}

    if args.litert_torch_python:
        from tests.realmodels.minilm import model_dir

        done = subprocess.run([args.litert_torch_python, __file__, "--litert-torch", model_dir(), str(work)],
                              capture_output=True, text=True, timeout=3600)
        reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if not reports:
            rows["litert-torch"] = {"error": (done.stderr or done.stdout)[-600:]}
        for report in reports:
            name = f"litert-torch {report['file']}"
            if "error" in report:
                rows[name] = report
                continue
            path = work / f"litert_torch {report['file']}.tflite"
            got, timing = run_file(path, name)
            size = os.path.getsize(path)
            rows[name] = {"bytes": size, "vs_float": round(size / float_size, 4), "convert_s": report["seconds"],
                          "max_abs_vs_source": float(np.abs(got - reference).max()), **scores(got, reference),
                          **timing}
            print(name, rows[name], flush=True)
    else:
        rows["litert-torch"] = {"error": "not run: no --litert-torch-python given"}

    # latency: every file in turn, LATENCY_RUNS rounds, so that the shared machine's load falls on all alike
    times: dict = {row: [] for row in interpreters}
    for it, index in interpreters.values():
        it.set_tensor(index, sentences[0].numpy().astype(it.get_input_details()[0]["dtype"]))
        it.invoke()
    for _ in range(LATENCY_RUNS):
        for row, (it, _) in interpreters.items():
            start = time.perf_counter()
            it.invoke()
            times[row].append(time.perf_counter() - start)
    for row, values in times.items():
        rows[row]["latency_ms"] = round(1000 * float(np.median(values)), 2)
        print(row, "latency", rows[row]["latency_ms"], "ms", flush=True)

    import ai_edge_litert

    out = {"machine": describe_machine(torch=torch.__version__, threads=2,
                                       litert=getattr(ai_edge_litert, "__version__", "?")),
           "sentences": {"evaluation": EVALUATE, "tokens": 32, "batch": 1}, "files": rows}
    results = root / "benchmarks" / "results" / "tflite_weight_only.json"
    results.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
