"""Keras benchmarks: digits CNN accuracy (float / 50% filter-pruned / int8 TFLite) and the
training-step overhead of a compressed (mask-wrapped) model against the plain model.

    PYTHONPATH=. python benchmarks/bench_keras.py

Writes benchmarks/results/keras.json and benchmarks/RESULTS_keras.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner  # noqa: E402
from slimkit.frameworks.tensorflow.models import compile_classifier, digits_cnn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0], "tensorflow": tf.__version__, "keras": keras.__version__,
            "note": "shared 2-core machine, other engineers' jobs running: timings are noisy"}


def timed_steps(model: keras.Model, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    """Mean seconds per ``train_on_batch`` over ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps


VARIANTS = {
    "plain": None,
    "LevelPruner (all conv + dense)": lambda m: LevelPruner(m, [{"sparsity": 0.5, "op_types": ["Conv2D", "Dense"]}]),
    "L1FilterPruner (conv)": lambda m: L1FilterPruner(m, [{"sparsity": 0.5, "op_types": ["Conv2D"]}]),
}


def overhead(width: int = 32, batch: int = 64, steps: int = 20, repeats: int = 7) -> list[dict]:
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
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                times[name].append(timed_steps(model, x, y, steps))
        plain = statistics.median(times["plain"])
        for name, values in times.items():
            median = statistics.median(values)
            rows.append({"variant": name, "xla": jit, "batch": batch, "median_ms_per_step": 1000 * median,
                         "min_ms_per_step": 1000 * min(values), "overhead_vs_plain": median / plain - 1.0})
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
             f"Machine: {m['platform']}, {m['cpus']} CPUs (shared by several jobs; 1-minute load average "
             f"{m['load_average_1m']:.1f} at start), Python {m['python']}, TensorFlow {m['tensorflow']}, "
             f"Keras {m['keras']}. Produced by `benchmarks/bench_keras.py`; raw numbers in "
             "`benchmarks/results/keras.json`.", "",
             "## Digits CNN (width 32, scikit-learn digits, 450 test images)", "",
             "| model | test accuracy | file bytes | gzip bytes |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['accuracy']:.4f} | {r['bytes']:,} | {r['gzip_bytes']:,} |"
              for r in result["accuracy"]]
    lines += ["", "Pruning removes 50% of every Conv2D's filters (L1 norm), fine-tuned 8 epochs with "
              "`model.fit` + `CompressionCallback`; zeros are baked in, so the dense files keep their size and "
              "the gain shows under compression (gzip) or after making the channels physical.", "",
              "## Training-step overhead of the mask wrappers", "",
              "`train_on_batch` on the digits CNN (width 32), batch 64; median (and min) over 7 rounds of 20 steps, "
              "the three variants timed round-robin in each round.", "",
              "| variant | XLA | median ms/step | min ms/step | overhead vs plain |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['xla']} | {r['median_ms_per_step']:.2f} | {r['min_ms_per_step']:.2f} | "
              f"{100 * r['overhead_vs_plain']:+.1f}% |" for r in result["overhead"]]
    lines += ["", "tfmot side-by-side: not run (needs a separate tf-keras environment; not done this session).", ""]
    return "\n".join(lines)


def main() -> None:
    result = {"machine": machine()}
    start = time.perf_counter()
    result["overhead"] = overhead()
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
