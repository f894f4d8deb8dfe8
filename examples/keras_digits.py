"""Prune a Keras CNN on the bundled 8x8 digits with L1 filter pruning, fine-tune it with ``fit``,
and ship it as an int8 TFLite file.

    PYTHONPATH=. python examples/keras_digits.py [--out DIR]

Steps: train the float model; ``L1FilterPruner`` removes 50% of the filters of every Conv2D;
``model.fit(..., callbacks=[CompressionCallback(pruner)])`` fine-tunes with the masks applied;
``export_model`` writes the weights with zeros baked in (a ``.weights.h5`` file that loads into
the original architecture without slimkit) and the masks (``.npz``); ``export_tflite`` writes a
float and a full-integer int8 file, calibrated on training images, and both run in the LiteRT
interpreter. Then quantization-aware training: ``QATQuantizer`` on the float model, trained with
``fit`` + ``CompressionCallback``, and ``export_tflite(model, path, quantizer=qat)`` writes an int8
file with the ranges QAT learned (no representative data). Prints a table of accuracy and file
sizes (Keras rows are ``.weights.h5`` files; gzip shows what the zeros are worth on disk). About a
minute and a half on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from slimkit.algorithms.pruning import L1FilterPruner  # noqa: E402
from slimkit.algorithms.quantization import QATQuantizer  # noqa: E402
from slimkit.frameworks.tensorflow import CompressionCallback, export_tflite, run_tflite, save_model  # noqa: E402
from slimkit.frameworks.tensorflow.models import compile_classifier, digits_cnn, load_digits_arrays  # noqa: E402


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def sizes(path: str) -> tuple[int, int]:
    with open(path, "rb") as stream:
        data = stream.read()
    return len(data), len(gzip.compress(data, 9))


# Quantize where the int8 kernels' tensors are. With dummy_input, conv1 / conv2 fold the BatchNorm that
# follows them (their weights are quantized as the folded weights, which the int8 file holds); their outputs
# are quantized after the ReLU (the fused conv+BN+ReLU kernel's output). The input of conv1 is the model input.
QAT_CONFIG = [{"quant_types": ["input", "weight"], "op_names": ["conv1"]},
              {"quant_types": ["weight"], "op_names": ["conv2"]},
              {"quant_types": ["output"], "op_names": ["relu1", "relu2", "gap"]},
              {"quant_types": ["weight", "output"], "op_names": ["conv3", "fc"]}]


def run(out_dir: str, width: int = 32, epochs: int = 10, finetune_epochs: int = 8, qat_epochs: int = 3,
        seed: int = 0) -> list[dict]:
    """Train, prune, fine-tune and export; QAT and export; returns one row per artefact."""
    x_train, y_train, x_test, y_test = load_digits_arrays()
    import keras  # after slimkit's TensorFlow package, which holds back TensorFlow's native start-up lines

    keras.utils.set_random_seed(seed)
    rows = []

    start = time.perf_counter()
    model = compile_classifier(digits_cnn(width=width))
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    float_path = os.path.join(out_dir, "digits_float.weights.h5")
    save_model(model, float_path)  # weights only, like the pruned export (model.save_weights adds optimizer slots)
    rows.append({"model": "Keras float", "accuracy": accuracy(model.predict(x_test, verbose=0), y_test),
                 "file": float_path, "seconds": time.perf_counter() - start})
    float_tflite = os.path.join(out_dir, "digits_float.tflite")
    export_tflite(model, float_tflite)
    rows.append({"model": "TFLite float", "accuracy": accuracy(run_tflite(float_tflite, x_test), y_test),
                 "file": float_tflite})
    float_int8 = os.path.join(out_dir, "digits_float_int8.tflite")
    export_tflite(model, float_int8, representative_data=x_train[:256])
    rows.append({"model": "TFLite int8", "accuracy": accuracy(run_tflite(float_int8, x_test), y_test),
                 "file": float_int8})

    start = time.perf_counter()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}])
    model = compile_classifier(pruner.compress())
    pruned_before = accuracy(model.predict(x_test, verbose=0), y_test)
    model.fit(x_train, y_train, epochs=finetune_epochs, batch_size=64, verbose=0,
              callbacks=[CompressionCallback(pruner)])
    pruned_path = os.path.join(out_dir, "digits_pruned.weights.h5")
    pruner.export_model(model_path=pruned_path, mask_path=os.path.join(out_dir, "digits_pruned_masks.npz"))
    reloaded = digits_cnn(width=width)  # plain Keras: the original architecture, no slimkit involved
    reloaded.load_weights(pruned_path)
    rows.append({"model": f"Keras 50% filters pruned (before fine-tune {pruned_before:.1%})",
                 "accuracy": accuracy(reloaded.predict(x_test, verbose=0), y_test), "file": pruned_path,
                 "seconds": time.perf_counter() - start})

    int8_path = os.path.join(out_dir, "digits_pruned_int8.tflite")
    export_tflite(model, int8_path, representative_data=x_train[:256])
    rows.append({"model": "TFLite int8, pruned", "accuracy": accuracy(run_tflite(int8_path, x_test), y_test),
                 "file": int8_path})

    start = time.perf_counter()
    qat_model = digits_cnn(width=width)
    qat_model.load_weights(float_path)
    qat = QATQuantizer(qat_model, QAT_CONFIG, dummy_input=x_train[:1])  # dummy_input: BatchNorm folding
    qat_model = compile_classifier(qat.compress(), learning_rate=1e-3)
    qat_model.fit(x_train, y_train, epochs=qat_epochs, batch_size=64, verbose=0, callbacks=[CompressionCallback(qat)])
    qat_path = os.path.join(out_dir, "digits_qat.weights.h5")
    qat.export_model(qat_path, calibration_path=os.path.join(out_dir, "digits_qat_calibration.json"))
    rows.append({"model": f"Keras QAT (fake-quant, {qat_epochs} epochs)",
                 "accuracy": accuracy(qat_model.predict(x_test, verbose=0), y_test), "file": qat_path,
                 "seconds": time.perf_counter() - start})
    qat_int8 = os.path.join(out_dir, "digits_qat_int8.tflite")
    export_tflite(qat_model, qat_int8, quantizer=qat)
    rows.append({"model": "TFLite int8 from the QAT ranges", "accuracy": accuracy(run_tflite(qat_int8, x_test), y_test),
                 "file": qat_int8})
    for row in rows:
        row["bytes"], row["gzip_bytes"] = sizes(row["file"])
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | test accuracy | file bytes | gzip bytes |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['accuracy']:.1%} | {r['bytes']:,} | {r['gzip_bytes']:,} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None,
                        help="keep the exported files in this folder (default: a temporary one, removed at the end)")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keras_digits_") as scratch:
        out_dir = args.out or scratch
        os.makedirs(out_dir, exist_ok=True)
        rows = run(out_dir)
    print(table(rows))
    kept = f"files in {args.out}" if args.out else "files written to a temporary folder, removed (--out DIR keeps them)"
    print(f"\n{kept}; total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
