"""slimkit's int8 TFLite files beside Google's litert-torch (PT2E int8), side by side in one run: LiteRT latency
(XNNPACK, 2 threads, median of 20, the files run round robin), int8 / float ratio, XNNPACK partitions, time to
quantize (prepare + calibrate) and to convert (write the file), and output SQNR against the float PyTorch model.

Same models (ResNet-18, ResNet-50, MobileNetV2 from slimkit.models, random init with BatchNorm statistics settled on
random data, the same weights for both tools), the same calibration batches. slimkit: ``PostTrainingQuantizer``
(minmax, whole graph: ``op_types: ['default']``) and ``TFLiteConverter``; litert-torch: ``torch.export``,
``prepare_pt2e`` / ``convert_pt2e`` with its ``PT2EQuantizer`` (symmetric per-channel weights) and
``litert_torch.convert``. Float files: ``TFLiteConverter`` and ``litert_torch.convert`` of the float model.

litert-torch needs ``typing-extensions<4.13`` (its xdsl dependency), so it runs in its own environment:

    make bench-litert-torch

(``.venv-litert-torch``: torch 2.13 CPU, litert-torch 0.10.0 and slimkit, pinned by
``benchmarks/constraints-litert-torch.txt``). Writes benchmarks/results/litert_torch.json; RESULTS_latency.md
quotes it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the int8 zoo lives in tests/

from machine_info import describe_machine  # noqa: E402
from settle import settle_batchnorm  # noqa: E402

from slimkit import models  # noqa: E402
from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from slimkit.converter import TFLiteConverter  # noqa: E402
from slimkit.utils.litert import delegate_partitions, interpreter  # noqa: E402

MODELS = {"resnet18": lambda: models.resnet18(num_classes=1000),
          "resnet50": lambda: models.resnet50(num_classes=1000),
          "mobilenet_v2": lambda: models.mobilenet_v2(num_classes=1000)}
WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]
THREADS, RUNS, WARMUP = 2, 20, 3


def settled(name: str, size: int) -> torch.nn.Module:
    """The model with random weights (seed 0) and BatchNorm running statistics from random images."""
    torch.manual_seed(0)
    return settle_batchnorm(MODELS[name](), [torch.randn(8, 3, size, size) for _ in range(2)])


def slimkit_int8(model, example, calibration, path) -> dict[str, float]:
    start = time.perf_counter()
    ptq = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=example)
    ptq.compress()
    ptq.calibrate(calibration)
    model.eval()
    middle = time.perf_counter()
    TFLiteConverter(model, example, path).convert()
    return {"quantize_s": middle - start, "convert_s": time.perf_counter() - middle}


def litert_torch_int8(model, example, calibration, path) -> dict[str, float]:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    start = time.perf_counter()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    exported = torch.export.export(model, (example,)).module()
    prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calibration:
            for row in batch.split(1):  # the export is for batch 1
                prepared(row)
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    middle = time.perf_counter()
    litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(path)
    return {"quantize_s": middle - start, "convert_s": time.perf_counter() - middle}


def litert_torch_float(model, example, path) -> dict[str, float]:
    import litert_torch

    start = time.perf_counter()
    litert_torch.convert(model, (example,)).export(path)
    return {"quantize_s": 0.0, "convert_s": time.perf_counter() - start}


def slimkit_float(model, example, path) -> dict[str, float]:
    start = time.perf_counter()
    TFLiteConverter(model, example, path).convert()
    return {"quantize_s": 0.0, "convert_s": time.perf_counter() - start}


def warm_up() -> None:
    """One small ``torch.export`` first: its one-time start-up cost (seconds) is charged to neither tool."""
    torch.export.export(torch.nn.Conv2d(3, 3, 3), (torch.randn(1, 3, 8, 8),))


class Runner:
    """A file in LiteRT with ``THREADS`` threads; feeds an NCHW image in the file's own input layout (quantized first
    where the file takes int8, as litert-torch's int8 files do; their int8 output is dequantized)."""

    def __init__(self, path: str):
        self.interpreter = interpreter(model_path=path, num_threads=THREADS)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        shape = tuple(self.input["shape"])
        x = image if shape == image.shape else image.transpose(0, 2, 3, 1)
        if self.input["dtype"] != np.float32:
            scale, zero = self.input["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127)
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x, self.input["dtype"]))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] != np.float32:
            scale, zero = self.output["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return out.reshape(image.shape[0], -1)

    def timed(self, image: np.ndarray) -> float:
        start = time.perf_counter()
        self(image)
        return time.perf_counter() - start


def sqnr(reference: np.ndarray, got: np.ndarray) -> float:
    noise = np.sum((reference - got) ** 2)
    return float(10 * np.log10(np.sum(reference ** 2) / noise)) if noise > 0 else float("inf")


def image_case(name: str, size: int, calibration_batches: int) -> tuple:
    """An image model of MODELS: settled weights, a batch-1 example, calibration batches of 4 and 4 test images, all
    random (seeded)."""
    gen = torch.Generator().manual_seed(1)
    example = torch.randn(1, 3, size, size, generator=gen)
    calibration = [torch.randn(4, 3, size, size, generator=gen) for _ in range(calibration_batches)]
    tests = [torch.randn(1, 3, size, size, generator=gen) for _ in range(4)]
    return settled(name, size), example, calibration, tests


def zoo_case(name: str, calibration_batches: int) -> tuple:
    """A structure of the int8 exactness zoo (tests/int8zoo) on the bundled digits: its seeded weights with settled
    BatchNorm, the first test digit as the example, training digits in batches of 4 to calibrate, 4 test digits."""
    from tests.int8zoo.structures import STRUCTURES, build, digits

    model, test = build(name, batch=4)
    train, _ = digits(STRUCTURES[name].data)
    calibration = [train[64 + 4 * i:68 + 4 * i] for i in range(calibration_batches)]
    return model, test[:1], calibration, list(test.split(1))


def bench(float_model: torch.nn.Module, example: torch.Tensor, calibration: list, tests: list) -> dict:
    """Both tools' int8 and float files of ``float_model``, timed round robin. A tool that cannot convert the model
    gets its error recorded in place of figures."""
    with torch.no_grad():
        reference = np.concatenate([float_model(x).numpy() for x in tests])
    folder = tempfile.mkdtemp()
    writers = {
        "slimkit_float": lambda path: slimkit_float(float_model, example, path),
        "litert_torch_float": lambda path: litert_torch_float(float_model, example, path),
        "litert_torch_int8": lambda path: litert_torch_int8(copy.deepcopy(float_model), example, calibration, path),
        "slimkit_int8": lambda path: slimkit_int8(copy.deepcopy(float_model), example, calibration, path),
    }
    paths, seconds, errors = {}, {}, {}
    for key, write in writers.items():
        path = os.path.join(folder, f"{key}.tflite")
        try:
            seconds[key] = write(path)
            paths[key] = path
        except Exception as error:  # a peer that cannot convert a structure is a result, not a crash
            errors[key] = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    runners = {key: Runner(path) for key, path in paths.items()}
    image = tests[0].numpy()
    for runner in runners.values():
        for _ in range(WARMUP):
            runner(image)
    times: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(RUNS):  # round robin: load changes on the shared machine hit every file alike
        for key, runner in runners.items():
            times[key].append(runner.timed(image))
    result = {"input": list(example.shape), "calibration_images": sum(len(b) for b in calibration), "files": {},
              "errors": errors}
    for key, path in paths.items():
        outputs = np.concatenate([runners[key](x.numpy()) for x in tests])
        partitions, undelegated = delegate_partitions(model_path=path, num_threads=THREADS)
        result["files"][key] = {
            "median_ms": round(1000 * statistics.median(times[key]), 3),
            "min_ms": round(1000 * min(times[key]), 3),
            "quantize_s": round(seconds[key]["quantize_s"], 2),
            "convert_s": round(seconds[key]["convert_s"], 2),
            "size_kb": round(os.path.getsize(path) / 1024, 1),
            "xnnpack_partitions": partitions, "undelegated_ops": undelegated,
            "sqnr_db_vs_float_model": round(sqnr(reference.reshape(outputs.shape), outputs), 1),
        }
    files = result["files"]
    for tool in ("slimkit", "litert_torch"):
        if f"{tool}_int8" in files and f"{tool}_float" in files:
            result[f"{tool}_int8_over_float"] = round(files[f"{tool}_int8"]["median_ms"] /
                                                      files[f"{tool}_float"]["median_ms"], 2)
    if "slimkit_int8" in files and "litert_torch_int8" in files:
        result["int8_slimkit_over_litert_torch"] = round(files["slimkit_int8"]["median_ms"] /
                                                         files["litert_torch_int8"]["median_ms"], 2)
    for key in ("int8", "float"):  # litert-torch's seconds over slimkit's: file writing, and everything
        if f"slimkit_{key}" in files and f"litert_torch_{key}" in files:
            slim, peer = files[f"slimkit_{key}"], files[f"litert_torch_{key}"]
            result[f"{key}_convert_speedup"] = round(peer["convert_s"] / slim["convert_s"], 1)
            result[f"{key}_total_speedup"] = round((peer["convert_s"] + peer["quantize_s"]) /
                                                   (slim["convert_s"] + slim["quantize_s"]), 1)
    return result


def table(results: dict) -> str:
    """The figures of ``results`` (this script's JSON) as the markdown table RESULTS_latency.md quotes."""
    rows = ["| model | file | median ms | min ms | int8 / float | XNNPACK partitions (undelegated) | quantize s | "
            "convert s | size KB | SQNR dB vs float |", "|" + "---|" * 10]
    for name, result in results["models"].items():
        for key, f in result["files"].items():
            tool, kind = key.rsplit("_", 1)
            ratio = result.get(f"{tool}_int8_over_float", "") if kind == "int8" else ""
            undelegated = f" ({', '.join(f['undelegated_ops'])})" if f["undelegated_ops"] else ""
            rows.append(f"| {name} | {tool} {kind} | {f['median_ms']} | {f['min_ms']} | {ratio} | "
                        f"{f['xnnpack_partitions']}{undelegated} | {f['quantize_s']} | {f['convert_s']} | "
                        f"{f['size_kb']} | {f['sqnr_db_vs_float_model']} |")
        for key, error in result.get("errors", {}).items():
            tool, kind = key.rsplit("_", 1)
            rows.append(f"| {name} | {tool} {kind} | cannot convert: {error} |" + " |" * 8)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--zoo", nargs="*", default=None, metavar="STRUCTURE",
                        help="also the int8 zoo's structures (tests/int8zoo; all of them when none is named)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "litert_torch.json"))
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = parser.parse_args()
    if args.table:
        with open(args.out) as handle:
            print(table(json.load(handle)))
        return
    import importlib.metadata as metadata

    torch.set_num_threads(THREADS)
    warm_up()
    results = {"machine": describe_machine(torch=torch.__version__, litert_torch=metadata.version("litert-torch"),
                                           ai_edge_litert=metadata.version("ai-edge-litert")),
               "threads": THREADS, "runs": RUNS, "models": {}}
    cases = {name: (lambda name=name: image_case(name, args.size, args.calibration_batches)) for name in args.models}
    if args.zoo is not None:
        from tests.int8zoo.structures import STRUCTURES

        cases.update({f"zoo/{name}": (lambda name=name: zoo_case(name, args.calibration_batches))
                      for name in (args.zoo or STRUCTURES)})
    for name, case in cases.items():
        results["models"][name] = bench(*case())
        print(name, json.dumps(results["models"][name]), flush=True)
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    tmp = args.out + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(results, handle, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
