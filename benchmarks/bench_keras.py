"""Keras benchmarks: digits CNN accuracy (float / 50% filter-pruned / int8 TFLite / QAT and its int8
TFLite) and the training-step overhead of a compressed (mask-wrapped or fake-quantizing) model against
the plain model.

    PYTHONPATH=. python benchmarks/bench_keras.py              # everything, files written
    PYTHONPATH=. python benchmarks/bench_keras.py --fit-step   # QAT / float fit-step ratio only, printed

Writes benchmarks/results/keras.json and benchmarks/RESULTS_keras.md.
"""

from __future__ import annotations

import importlib.util
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
from slimkit.algorithms.quantization import QATQuantizer  # noqa: E402
from slimkit.frameworks.tensorflow.models import compile_classifier, digits_cnn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
QAT_CONFIG = [{"quant_types": ["input", "weight"], "op_names": ["conv1"]},   # examples/keras_digits.py's
              {"quant_types": ["weight"], "op_names": ["conv2"]},
              {"quant_types": ["output"], "op_names": ["relu1", "relu2", "gap"]},
              {"quant_types": ["weight", "output"], "op_names": ["conv3", "fc"]}]


def machine() -> dict:
    return describe_machine("shared 2-core machine, other engineers' jobs running: timings are noisy",
                            tensorflow=tf.__version__, keras=keras.__version__)


def timed_steps(model: keras.Model, x: np.ndarray, y: np.ndarray, steps: int) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds per ``train_on_batch`` over ``steps`` steps.

    CPU time (all of this process's threads) is the steadier figure on a shared machine: other
    jobs stretch the wall clock but not the work this process does.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


VARIANTS = {
    "plain": None,
    "LevelPruner (all conv + dense)": lambda m: LevelPruner(m, [{"sparsity": 0.5, "op_types": ["Conv2D", "Dense"]}]),
    "L1FilterPruner (conv)": lambda m: L1FilterPruner(m, [{"sparsity": 0.5, "op_types": ["Conv2D"]}]),
    "QATQuantizer (conv + dense + ReLU, 9 tensors)": lambda m: QATQuantizer(m, QAT_CONFIG),
}


def overhead(width: int = 32, batch: int = 64, steps: int = 10, repeats: int = 15) -> list[dict]:
    """Per XLA setting, time the variants interleaved (round robin) so load drift hits them alike."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    rows = []
    for jit in (False, True):
        models = {}
        for name, make_pruner in VARIANTS.items():
            keras.utils.set_random_seed(0)
            model = digits_cnn(width=width)
            if make_pruner is not None:
                model = make_pruner(model).compress()
            compile_classifier(model)
            model.jit_compile = jit
            for _ in range(3):  # trace / compile, warm up
                model.train_on_batch(x, y)
            models[name] = model
        walls: dict[str, list[float]] = {name: [] for name in models}
        cpus: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                wall, cpu = timed_steps(model, x, y, steps)
                walls[name].append(wall)
                cpus[name].append(cpu)
        plain_cpu, plain_wall = statistics.median(cpus["plain"]), statistics.median(walls["plain"])
        for name in models:
            cpu, wall = statistics.median(cpus[name]), statistics.median(walls[name])
            rows.append({"variant": name, "xla": jit, "batch": batch, "median_cpu_ms_per_step": 1000 * cpu,
                         "median_wall_ms_per_step": 1000 * wall, "min_wall_ms_per_step": 1000 * min(walls[name]),
                         "cpu_overhead_vs_plain": cpu / plain_cpu - 1.0,
                         "wall_overhead_vs_plain": wall / plain_wall - 1.0})
    return rows


def fit_step_ratio(width: int = 32, batch: int = 64, epochs: int = 8) -> list[dict]:
    """``fit`` time per step of QAT (with ``CompressionCallback``; plain and with BatchNorm folding) against the
    float model's, on the digits training set, per XLA setting: one epoch of each variant in turn (round robin),
    ``epochs`` times; medians of (process CPU, wall) seconds per step and their ratio to the float model's."""
    from slimkit.frameworks.tensorflow import CompressionCallback
    from slimkit.frameworks.tensorflow.models import load_digits_arrays

    x, y, _, _ = load_digits_arrays()
    steps = -(-len(x) // batch)
    variants = {"float": None, "QAT": {}, "QAT + BN folding (dummy_input)": {"dummy_input": x[:1]}}
    rows = []
    for jit in (False, True):
        runs = {}
        for name, kwargs in variants.items():
            keras.utils.set_random_seed(0)
            model = digits_cnn(width=width)
            callbacks = []
            if kwargs is not None:
                quantizer = QATQuantizer(model, QAT_CONFIG, **kwargs)
                model = quantizer.compress()
                callbacks = [CompressionCallback(quantizer)]
            compile_classifier(model)
            model.jit_compile = jit
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=callbacks)  # trace / compile
            runs[name] = (model, callbacks)
        cpus: dict[str, list[float]] = {name: [] for name in runs}
        walls: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(epochs):
            for name, (model, callbacks) in runs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=callbacks)
                walls[name].append((time.perf_counter() - wall) / steps)
                cpus[name].append((time.process_time() - cpu) / steps)
        float_cpu, float_wall = statistics.median(cpus["float"]), statistics.median(walls["float"])
        for name in runs:
            cpu, wall = statistics.median(cpus[name]), statistics.median(walls[name])
            rows.append({"variant": name, "xla": jit, "batch": batch, "steps_per_epoch": steps, "epochs": epochs,
                         "median_cpu_ms_per_step": 1000 * cpu, "median_wall_ms_per_step": 1000 * wall,
                         "cpu_ratio_vs_float": cpu / float_cpu, "wall_ratio_vs_float": wall / float_wall,
                         "load_average_1m": os.getloadavg()[0]})
    return rows


def accuracy_rows() -> list[dict]:
    spec = importlib.util.spec_from_file_location("keras_digits", os.path.join(HERE, "..", "examples",
                                                                                "keras_digits.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with tempfile.TemporaryDirectory() as out_dir:
        rows = example.run(out_dir)
    for row in rows:
        row["file"] = os.path.basename(row["file"])
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Keras benchmarks", "",
             f"Machine: {m['platform']}, {m['nproc']} CPUs ({m['cpu']}; shared by several jobs; 1-minute load "
             f"average {m['load_average'][0]:.1f} at start), Python {m['python']}, TensorFlow {m['tensorflow']}, "
             f"Keras {m['keras']}. Produced by `benchmarks/bench_keras.py`; raw numbers in "
             "`benchmarks/results/keras.json`.", "",
             "## Digits CNN (width 32, scikit-learn digits, 450 test images)", "",
             "| model | test accuracy | file bytes | gzip bytes |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['accuracy']:.4f} | {r['bytes']:,} | {r['gzip_bytes']:,} |"
              for r in result["accuracy"]]
    lines += ["", "Pruning removes 50% of every Conv2D's filters (L1 norm), fine-tuned 8 epochs with "
              "`model.fit` + `CompressionCallback`; zeros are baked in, so the dense files keep their size and "
              "the gain shows under compression (gzip) or after making the channels physical.", ""]
    lines += qat_section(result["accuracy"])
    lines += ["",
              "## Training-step overhead of the mask wrappers", "",
              "`train_on_batch` on the digits CNN (width 32), batch 64; medians over 15 rounds of 10 steps, "
              "the variants timed round-robin in each round. QAT computes its fake quantization with TF ops in "
              "the graph (EMA ranges in variables), XLA-compiled in the XLA rows. CPU time is this process's (all "
              "threads); "
              "it is the steadier figure on the shared machine.", "",
              "| variant | XLA | CPU ms/step | CPU overhead | wall ms/step (median / min) | wall overhead |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['xla']} | {r['median_cpu_ms_per_step']:.2f} | "
              f"{100 * r['cpu_overhead_vs_plain']:+.1f}% | {r['median_wall_ms_per_step']:.2f} / "
              f"{r['min_wall_ms_per_step']:.2f} | {100 * r['wall_overhead_vs_plain']:+.1f}% |"
              for r in result["overhead"]]
    lines += fit_section(result.get("fit_step", []))
    lines += tfmot_section()
    return "\n".join(lines)


def fit_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## QAT `fit` step against the float model's", "",
             "`model.fit` on the digits training set (width 32, batch 64), one epoch per variant in turn, medians of "
             f"{rows[0]['epochs']} epochs; QAT with `CompressionCallback`, fake quantization computed in the graph "
             "(TF ops, XLA-compiled when `jit_compile=True`).", "",
             "| variant | XLA | CPU ms/step | CPU ratio | wall ms/step | wall ratio | load (1 min) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['xla']} | {r['median_cpu_ms_per_step']:.2f} | {r['cpu_ratio_vs_float']:.2f}x | "
              f"{r['median_wall_ms_per_step']:.2f} | {r['wall_ratio_vs_float']:.2f}x | {r['load_average_1m']:.1f} |"
              for r in rows]
    return lines + [""]


def qat_section(rows: list[dict]) -> list[str]:
    by_name = {row["model"].split(" (")[0]: row for row in rows}
    keras_qat, tflite_qat = by_name.get("Keras QAT"), by_name.get("TFLite int8 from the QAT ranges")
    if keras_qat is None or tflite_qat is None:
        return []
    delta = 100 * (tflite_qat["accuracy"] - keras_qat["accuracy"])
    return ["## Quantization-aware training", "",
            "`QATQuantizer` on the trained float model (conv1 input + weight, conv2 weight, relu1 / relu2 / gap "
            "outputs, conv3 and fc weight + output; with `dummy_input`, conv1 / conv2 fold bn1 / bn2), 3 epochs "
            "of `fit` + `CompressionCallback`; `export_tflite(model, path, quantizer=qat)` writes int8 with the "
            "ranges QAT learned (no representative data).", "",
            "| Keras QAT (fake-quant) | int8 TFLite from the QAT ranges | difference | target |",
            "|---|---|---|---|",
            f"| {keras_qat['accuracy']:.4f} | {tflite_qat['accuracy']:.4f} | {delta:+.2f} points | within 0.5 point |",
            ""]


def tfmot_section() -> list[str]:
    """The side-by-side with tfmot, from results/keras_tfmot.json (bench_keras_tfmot.py, another environment)."""
    path = os.path.join(HERE, "results", "keras_tfmot.json")
    if not os.path.exists(path):
        return ["", "tfmot side-by-side: not run (`benchmarks/bench_keras_tfmot.py` needs tf-keras and tfmot).", ""]
    with open(path) as stream:
        data = json.load(stream)
    acc, versions = data["accuracy"], data["versions"]
    lines = ["", "## Beside TensorFlow Model Optimization (tfmot)", "",
             f"`benchmarks/bench_keras_tfmot.py` (tf-keras {versions['tf_keras']}, tfmot {versions['tfmot']}, in the "
             f"environment `make bench-tfmot` builds; load average {data['load_average_1m']:.1f}): "
             "fine-grained 50% magnitude pruning of conv1-3 and fc of the same digits CNN, "
             f"{data['settings']['finetune_epochs']} fine-tuning epochs after {data['settings']['epochs']} float "
             "epochs (each library trains its own float model). slimkit: `LevelPruner` + `CompressionCallback`; "
             "tfmot: `prune_low_magnitude(ConstantSparsity(0.5, frequency=20))` + `UpdatePruningStep`, then "
             "`strip_pruning`.", "",
             "| library | float accuracy | pruned accuracy | sparsity of pruned layers |", "|---|---|---|---|"]
    lines += [f"| {name} | {row['float_accuracy']:.4f} | {row['pruned_accuracy']:.4f} | {row['sparsity']:.3f} |"
              for name, row in (("slimkit (Keras 3)", acc["slimkit"]), ("tfmot (tf-keras)", acc["tfmot"]))]
    lines += ["", "`fit` time per step (batch 64, 21 steps an epoch; median of 6 epochs, the four models round-robin):",
              "", "| model | CPU ms/step | wall ms/step |", "|---|---|---|"]
    lines += [f"| {name} | {row['median_cpu_ms']:.2f} | {row['median_wall_ms']:.2f} |"
              for name, row in data["fit_step"].items()]
    return lines + [""]


def main() -> None:
    if "--fit-step" in sys.argv[1:]:  # the QAT / float fit-step ratio only, printed (no files written)
        print("\n".join(fit_section(fit_step_ratio())))
        return
    result = {"machine": machine()}
    start = time.perf_counter()
    result["overhead"] = overhead()
    result["fit_step"] = fit_step_ratio()
    result["accuracy"] = accuracy_rows()
    result["seconds"] = time.perf_counter() - start
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "keras.json"), "w") as stream:
        json.dump(result, stream, indent=2)
    with open(os.path.join(HERE, "RESULTS_keras.md"), "w") as stream:
        stream.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
