"""Keras speedup figures: the digits CNN and the MobileNet-style network, trained on the bundled digits, pruned
50 % (L1 filters), fine-tuned, then made smaller with ModelSpeedup: parameters, float / int8 TFLite file
sizes, LiteRT latency, accuracy and speedup time, before and after.

    PYTHONPATH=. python benchmarks/bench_keras_speedup.py

Writes benchmarks/results/keras_speedup.json and the "## Keras speedup" section of
benchmarks/RESULTS_stacked.md (other sections of that file are left as they are).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner  # noqa: E402
from slimkit.frameworks.tensorflow import CompressionCallback, export_tflite, models  # noqa: E402
from slimkit.speedup import ModelSpeedup  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "RESULTS_stacked.md")
SECTION = "## Keras speedup"
# name: (builder, config_list, dependency_aware, images scaled by, {BatchNormalization: the conv it follows})
MODELS = {
    "digits CNN (width 32)": (lambda: models.digits_cnn(width=32), [{"sparsity": 0.5, "op_types": ["Conv2D"]}],
                              False, 1, {"bn1": "conv1", "bn2": "conv2"}),
    "MobileNet-style (width 16, 16x16 input)": (lambda: models.mobilenet_style((16, 16, 1), width=16),
                                                [{"sparsity": 0.5, "op_types": ["Conv2D", "DepthwiseConv2D"]}], True,
                                                2, {}),
}
EPOCHS = 30
# keras.applications, random weights: name -> (builder, TFLite files measured)
APPLICATIONS = {
    "MobileNetV2 (alpha 0.35, 96x96)": (lambda: keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10), True),
    "ResNet50 (64x64)": (lambda: keras.applications.ResNet50(input_shape=(64, 64, 3), weights=None, classes=10),
                         False),
    "EfficientNetB0 (64x64)": (lambda: keras.applications.EfficientNetB0(input_shape=(64, 64, 3), weights=None,
                                                                         classes=10), False),
    "DenseNet121 (64x64)": (lambda: keras.applications.DenseNet121(input_shape=(64, 64, 3), weights=None,
                                                                   classes=10), False),
    "Xception (71x71)": (lambda: keras.applications.Xception(input_shape=(71, 71, 3), weights=None, classes=10),
                         False),
    "NASNetMobile (64x64)": (lambda: keras.applications.NASNetMobile(input_shape=(64, 64, 3), weights=None,
                                                                     classes=10), False),
}


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(model.predict(x, verbose=0), -1) == y).mean())


def tflite_latency_ms(flatbuffer: bytes, sample: np.ndarray, runs: int = 200) -> float:
    """Median LiteRT invoke time (one thread) on one sample."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    if detail["dtype"] == np.int8:
        scale, zero = detail["quantization"]
        sample = np.clip(np.round(sample / scale + zero), -128, 127).astype(np.int8)
    interpreter.set_tensor(detail["index"], sample)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def files(model: keras.Model, x_train: np.ndarray, folder: str, tag: str) -> dict:
    sample = x_train[:1].astype(np.float32)
    float_file = export_tflite(model, os.path.join(folder, f"{tag}.tflite"))
    int8_file = export_tflite(model, os.path.join(folder, f"{tag}_int8.tflite"), representative_data=x_train[:256])
    return {"float_bytes": len(float_file), "int8_bytes": len(int8_file),
            "float_latency_ms": tflite_latency_ms(float_file, sample),
            "int8_latency_ms": tflite_latency_ms(int8_file, sample)}


def run_model(name: str, build, config: list[dict], dependency_aware: bool, scale: int, batch_norms: dict,
              data: tuple, folder: str) -> list[dict]:
    x_train, y_train, x_test, y_test = (np.repeat(np.repeat(a, scale, 1), scale, 2) if a.ndim == 4 else a
                                        for a in data)
    keras.utils.set_random_seed(0)
    model = models.compile_classifier(build())
    model.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, verbose=0)
    trained = accuracy(model, x_test, y_test)
    before = files(model, x_train, folder, "before")
    pruner = L1FilterPruner(model, config, dependency_aware=dependency_aware)
    pruner.compress()
    models.compile_classifier(model, 1e-3)
    model.fit(x_train, y_train, batch_size=64, epochs=5, verbose=0, callbacks=[CompressionCallback(pruner)])
    masked = accuracy(model, x_test, y_test)
    masks = pruner.get_masks()
    pruner.unwrap_model()
    rows = [measure(name, model, masks, (x_train, x_test, y_test), folder)]
    if batch_norms:  # the whole channel masked: each BatchNormalization's gamma and beta with its conv's filters
        for bn, conv in batch_norms.items():
            keep = np.asarray(masks[conv]["weight"]).any((0, 1, 2)).astype(np.float32)
            masks[bn] = {"weight": keep, "bias": keep}
        carrier = LevelPruner(model, [{"sparsity": 0.5, "op_names": list(masks)}])  # applies the masks as given
        carrier.load_masks(masks)
        bn_masked = accuracy(model, x_test, y_test)
        carrier.unwrap_model()
        rows.append(measure(f"{name}, BatchNormalization masked with its filters (not fine-tuned)", model, masks,
                            (x_train, x_test, y_test), folder))
        rows[-1].update(accuracy_masked=bn_masked)
    for row in rows:
        row.update(before=before, accuracy_trained=trained, dependency_aware=dependency_aware)
    rows[0].update(accuracy_masked=masked)
    return rows


def measure(name: str, model: keras.Model, masks: dict, data: tuple, folder: str) -> dict:
    x_train, x_test, y_test = data
    seconds, small, report = [], None, None
    for _ in range(3):
        speedup = ModelSpeedup(model, x_test[:32], masks)
        start = time.perf_counter()
        small = speedup.speedup_model()
        seconds.append(time.perf_counter() - start)
        report = speedup.report
    return {"model": name, "accuracy_small": accuracy(small, x_test, y_test), "after": files(small, x_train, folder,
                                                                                              "after"),
            "params_before": model.count_params(), "params_after": small.count_params(),
            "macs_before": report.flops_before, "macs_after": report.flops_after,
            "speedup_seconds_median": statistics.median(seconds), "speedup_seconds_first": seconds[0],
            "max_relative_error": report.max_relative_error,
            "layers": [f"{c.name} {c.out_before}->{c.out_after}" for c in report.layers if c.out_before != c.out_after]}


def run_application(name: str, build, tflite: bool, folder: str) -> dict:
    """Random weights with BatchNormalization statistics drawn as after training; 50 % L1, dependency-aware."""
    keras.utils.set_random_seed(0)
    model = build()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.uniform(-0.5, 0.5, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.5, 2.0, n)])
    x = rng.standard_normal((2, *model.input_shape[1:])).astype(np.float32)
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D", "DepthwiseConv2D", "SeparableConv2D"]}],
                            dependency_aware=True)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    seconds = []
    for _ in range(3):
        speedup = ModelSpeedup(model, x, masks)
        start = time.perf_counter()
        small = speedup.speedup_model()
        seconds.append(time.perf_counter() - start)
    row = {"model": name, "params_before": model.count_params(), "params_after": small.count_params(),
           "macs_before": speedup.report.flops_before, "macs_after": speedup.report.flops_after,
           "speedup_seconds_median": statistics.median(seconds), "timings": speedup.report.timings,
           "max_relative_error": speedup.report.max_relative_error}
    if tflite:
        row["float_bytes"] = [len(export_tflite(m, os.path.join(folder, f"{tag}.tflite")))
                              for m, tag in ((model, "app_before"), (small, "app_after"))]
    return row


def section(result: dict) -> str:
    machine = result["machine"]
    lines = [SECTION, "",
             "`python benchmarks/bench_keras_speedup.py` (figures also in `benchmarks/results/keras_speedup.json`). "
             f"Each model is trained {EPOCHS} epochs on the bundled 8x8 digits (MobileNet-style: up-sampled to "
             "16x16), pruned 50 % with `L1FilterPruner` "
             "(MobileNet-style: `dependency_aware=True`, conv and depthwise layers), fine-tuned 5 epochs with "
             "`CompressionCallback`, then `ModelSpeedup(model, x, masks).speedup_model()` builds the smaller "
             "`keras.Model`. TFLite files by `export_tflite` (float32; int8 calibrated on 256 training images); "
             "LiteRT latency: median of 200 single-thread invokes on one image. Speedup time: median of 3 runs "
             "(the first includes tracing).", "",
             f"Machine: {machine.get('cpu')}, {machine.get('nproc')} cores, load {machine.get('load_average')}; "
             f"TensorFlow {machine.get('tensorflow')}, Keras {machine.get('keras')}. {machine.get('note')}.", "",
             "| model | params | MACs | float TFLite bytes | int8 TFLite bytes | float / int8 LiteRT ms | "
             "test accuracy (trained / masked / smaller) | speedup s (median, first) | max rel. error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        b, a = row["before"], row["after"]
        lines.append(
            f"| {row['model']} | {row['params_before']:,} -> {row['params_after']:,} | {row['macs_before']:,} -> "
            f"{row['macs_after']:,} | {b['float_bytes']:,} -> {a['float_bytes']:,} | {b['int8_bytes']:,} -> "
            f"{a['int8_bytes']:,} | {b['float_latency_ms']:.4f} / {b['int8_latency_ms']:.4f} -> "
            f"{a['float_latency_ms']:.4f} / {a['int8_latency_ms']:.4f} | {row['accuracy_trained']:.3f} / "
            f"{row['accuracy_masked']:.3f} / {row['accuracy_small']:.3f} | {row['speedup_seconds_median']:.2f}, "
            f"{row['speedup_seconds_first']:.2f} | {row['max_relative_error']:.1e} |")
    lines.append("")
    for row in result["rows"]:
        lines.append(f"- {row['model']}: filters {', '.join(row['layers'])}.")
    lines += ["", "The masked and the smaller model give the same predictions (the accuracy columns; max rel. error "
              "is measured on 32 test images). Trained BatchNormalization shifts make a pruned filter a nonzero "
              "constant after its BatchNormalization. Where a 1x1 conv or the head reads it, the constant is folded "
              "into their biases (MobileNet-style: the bias-free 1x1 convs gain a bias), and a depthwise conv "
              "pruned with its expand conv outputs zeros whatever it receives: there every pruned channel goes. In "
              "the digits CNN a pruned filter whose constant stays positive after ReLU reaches a padded 3x3 conv, "
              "whose borders see zeros instead: those channels stay (with their zero filters) unless the "
              "BatchNormalization is masked with its filter (the second digits row; that changes the model, hence "
              "its own masked accuracy). Each file loses about 4 bytes (float) or 1 byte (int8) per removed "
              "weight; the latencies on this noisy shared machine are upper bounds.", ""]
    lines += ["`keras.applications` models, random weights with BatchNormalization statistics drawn as after "
              "training (gamma U(0.5, 1.5), beta U(-0.5, 0.5), mean N(0, 0.5), variance U(0.5, 2)), 50 % "
              "`L1FilterPruner` on conv, depthwise and separable layers, `dependency_aware=True`; max rel. error "
              "on 2 random inputs. EfficientNetB0 brings Rescaling / Normalization and squeeze-excite Multiply, "
              "DenseNet121 Concatenate and average pooling, Xception SeparableConv2D, NASNetMobile ZeroPadding2D "
              "and Cropping2D. Where far fewer parameters go (Xception, NASNetMobile), pruned channels meet padded "
              "(separable) convs after a BatchNormalization shift and stay (see above). The speedup times were "
              "taken at load average ~19 on 2 cores.", "",
              "| model | params | MACs | float TFLite bytes | speedup s (median of 3) | max rel. error |",
              "|---|---|---|---|---|---|"]
    for row in result["applications"]:
        size = " -> ".join(f"{b:,}" for b in row["float_bytes"]) if "float_bytes" in row else "not measured"
        lines.append(f"| {row['model']} | {row['params_before']:,} -> {row['params_after']:,} | "
                     f"{row['macs_before']:,} -> {row['macs_after']:,} | {size} | "
                     f"{row['speedup_seconds_median']:.2f} | {row['max_relative_error']:.1e} |")
    lines.append("")
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS_stacked.md, leaving the others."""
    existing = "# Stacked compression: results\n\n"
    if os.path.exists(RESULTS):
        with open(RESULTS) as stream:
            existing = stream.read()
    start = existing.find(SECTION)
    if start < 0:
        updated = existing.rstrip("\n") + "\n\n" + text
    else:
        end = existing.find("\n## ", start + len(SECTION))
        updated = existing[:start] + text + ("" if end < 0 else existing[end:])
    with open(RESULTS + ".tmp", "w") as stream:
        stream.write(updated.rstrip("\n") + "\n")
    os.replace(RESULTS + ".tmp", RESULTS)


def main() -> int:
    data = models.load_digits_arrays()
    with tempfile.TemporaryDirectory() as folder:
        rows = [row for name, spec in MODELS.items() for row in run_model(name, *spec, data, folder)]
        applications = [run_application(name, *spec, folder) for name, spec in APPLICATIONS.items()]
    result = {"machine": describe_machine(tensorflow=tf.__version__, keras=keras.__version__), "rows": rows,
              "applications": applications}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "keras_speedup.json"), "w") as stream:
        json.dump(result, stream, indent=2)
    write_section(section(result))
    print(section(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
