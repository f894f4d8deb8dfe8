"""Prune, then quantize, int8 TFLite: slimkit (Keras 3) beside tfmot (tf-keras) on the digits CNN and a
MobileNet-style model (the digits up-sampled to 16x16).

1. 50 % filter pruning. slimkit: ``L1FilterPruner`` + fine-tune, ``ModelSpeedup`` (a smaller model), whole-graph
   ``QATQuantizer``, ``export_tflite``. tfmot: ``prune_low_magnitude`` 50 % + fine-tune, ``strip_pruning``,
   pruning-preserving QAT (``quantize_apply`` with ``Default8BitPrunePreserveQuantizeScheme``), TFLiteConverter.
   tfmot has no structured removal: its zeros stay in the graph and in the file.
2. 80 % unstructured (digits CNN): slimkit ``AGPPruner`` + fine-tune, QAT stacked on it, int8 file dense and with
   ``sparse_weights=True``; accuracy against the pruned float model.

Runs in ``.venv-tfmot`` (built by ``make bench-tfmot``):

    .venv-tfmot/bin/python benchmarks/bench_stacked_tfmot.py [digits] [mobilenet] [unstructured]

With arguments only those parts run, and their entries replace the same entries of an existing results file.

slimkit's pruners and ModelSpeedup import torch, and export_tflite's check of a sparse int8 file imports
ai-edge-litert in a child process: ``make bench-tfmot`` installs both there (the pinned CPU torch).

Writes benchmarks/results/stacked_tfmot.json and prints it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras (and so tfmot) -> tf-keras; `import keras` stays Keras 3
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402
from bench_keras_tfmot import tf_keras_cnn, tf_keras_compile  # noqa: E402
from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.pruning import AGPPruner, L1FilterPruner  # noqa: E402
from slimkit.algorithms.quantization import QATQuantizer  # noqa: E402
from slimkit.frameworks.tensorflow import CompressionCallback, export_tflite  # noqa: E402
from slimkit.frameworks.tensorflow.models import (  # noqa: E402
    compile_classifier,
    digits_cnn,
    load_digits_arrays,
    mobilenet_style,
)
from slimkit.speedup import ModelSpeedup  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTH, EPOCHS, FINETUNE, QAT_EPOCHS = 32, 10, 5, 3
QAT_CONFIG = [{"quant_types": ["weight", "output"], "op_types": ["default"]}]


def tf_keras_mobilenet(width: int = 16) -> tf_keras.Model:
    """slimkit.frameworks.tensorflow.models.mobilenet_style((16, 16, 1), width) in tf-keras (the parameter counts are
    checked equal in :func:`main`)."""
    layers = tf_keras.layers
    inputs = tf_keras.Input((16, 16, 1))

    def bn_relu6(x, name):
        return layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x))

    y = bn_relu6(layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs), "stem")
    e = bn_relu6(layers.Conv2D(2 * width, 1, use_bias=False, name="b1_expand")(y), "b1_expand")
    d = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="b1_dw")(e)
    d = layers.Activation("relu6")(layers.BatchNormalization(momentum=0.9, name="b1_dw_bn")(d))
    p = layers.BatchNormalization(momentum=0.9)(layers.Conv2D(width, 1, use_bias=False, name="b1_project")(d))
    y = layers.Add()([y, p])
    e = bn_relu6(layers.Conv2D(3 * width, 1, use_bias=False, name="b2_expand")(y), "b2_expand")
    d = bn_relu6(layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="b2_dw")(e), "b2_dw")
    y = layers.BatchNormalization(momentum=0.9)(layers.Conv2D(3 * width // 2, 1, name="b2_project")(d))
    y = layers.Dropout(0.2)(layers.GlobalAveragePooling2D()(y))
    return tf_keras.Model(inputs, layers.Dense(10, name="fc")(y))


@dataclass(frozen=True)
class Spec:
    """One model of the filter-pruning comparison: its Keras 3 and tf-keras builders, the input up-sampling, slimkit's
    pruning config and the training epochs (float, fine-tuning after pruning, QAT), the same for both tools."""

    keras_build: Callable[[], keras.Model]
    tf_keras_build: Callable[[], tf_keras.Model]
    scale: int
    config: list[dict]
    dependency_aware: bool
    epochs: int
    finetune: int
    qat_epochs: int


SPECS = {
    "digits": Spec(lambda: digits_cnn(width=WIDTH), lambda: tf_keras_cnn(WIDTH), 1,
                   [{"sparsity": 0.5, "op_types": ["Conv2D"]}], False, EPOCHS, FINETUNE, QAT_EPOCHS),
    # as benchmarks/bench_keras_speedup.py prunes it: conv and depthwise filters, coupled through the residual Add
    "mobilenet": Spec(lambda: mobilenet_style((16, 16, 1), width=16), lambda: tf_keras_mobilenet(16), 2,
                      [{"sparsity": 0.5, "op_types": ["Conv2D", "DepthwiseConv2D"]}], True, 30, 10, 5),
}


def scaled(data: tuple, scale: int) -> tuple:
    """The digits with each image up-sampled ``scale`` times (pixels repeated)."""
    return tuple(np.repeat(np.repeat(a, scale, 1), scale, 2) if a.ndim == 4 else a for a in data)


def interpreter_class():
    """LiteRT's interpreter: ai-edge-litert when installed, else TensorFlow's copy of it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return tf.lite.Interpreter
    return Interpreter


def interpreter(flatbuffer: bytes):
    """An interpreter of ``flatbuffer``, one thread, tensors allocated."""
    runner = interpreter_class()(model_content=flatbuffer, num_threads=1)
    runner.allocate_tensors()
    return runner


def tflite_eval(flatbuffer: bytes, x: np.ndarray, y: np.ndarray, runs: int = 200) -> dict:
    """Test accuracy (batch 1, every image) and median single-image invoke time of an int8 file."""
    runner = interpreter(flatbuffer)
    detail, out = runner.get_input_details()[0], runner.get_output_details()[0]
    scale, zero = detail["quantization"]
    quantized = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    hits = 0
    for image, label in zip(quantized, y):
        runner.set_tensor(detail["index"], image[None])
        runner.invoke()
        hits += int(np.argmax(runner.get_tensor(out["index"])[0]) == label)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.invoke()
        times.append(time.perf_counter() - start)
    return {"tflite_accuracy": hits / len(y), "latency_ms": 1000 * statistics.median(times),
            "bytes": len(flatbuffer)}


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def train_float(x: np.ndarray, y: np.ndarray, spec: Spec = SPECS["digits"]) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = compile_classifier(spec.keras_build())
    model.fit(x, y, epochs=spec.epochs, batch_size=64, verbose=0)
    return model


def slimkit_filters(spec: Spec, data: tuple, folder: str) -> dict:
    """L1 filter pruning 50 % -> fine-tune -> ModelSpeedup -> whole-graph QAT -> int8 TFLite."""
    x_train, y_train, x_test, y_test = data
    model = train_float(x_train, y_train, spec)
    row = {"float_accuracy": accuracy(model, x_test, y_test), "params_before": model.count_params()}
    pruner = L1FilterPruner(model, spec.config, dependency_aware=spec.dependency_aware)
    compile_classifier(pruner.compress(), 1e-3)
    model.fit(x_train, y_train, epochs=spec.finetune, batch_size=64, verbose=0,
              callbacks=[CompressionCallback(pruner)])
    row["pruned_float_accuracy"] = accuracy(model, x_test, y_test)
    masks = pruner.get_masks()
    pruner.unwrap_model()
    small = ModelSpeedup(model, x_test[:32], masks).speedup_model()
    row["params"] = small.count_params()
    quantizer = QATQuantizer(small, QAT_CONFIG, dummy_input=x_train[:1])
    small = compile_classifier(quantizer.compress(), 1e-3)
    small.fit(x_train, y_train, epochs=spec.qat_epochs, batch_size=64, verbose=0,
              callbacks=[CompressionCallback(quantizer)])
    row["qat_accuracy"] = accuracy(small, x_test, y_test)
    flatbuffer = export_tflite(small, os.path.join(folder, "slimkit_filters_int8.tflite"), quantizer=quantizer,
                               representative_data=x_train[:256])
    row.update(tflite_eval(flatbuffer, x_test, y_test))
    return row


def tfmot_convert(model: tf_keras.Model, x_train: np.ndarray, sparse: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT] + ([tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse
                                                            else [])
    converter.representative_dataset = lambda: ([x_train[i:i + 1]] for i in range(256))
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def kernel_zeros(model: tf_keras.Model) -> dict[str, float]:
    """Fraction of zeros in each conv / depthwise / dense kernel of ``model``, by variable name."""
    return {w.name: float((w.numpy() == 0).mean()) for w in model.weights if w.name.endswith("kernel:0")}


def tfmot_magnitude(spec: Spec, data: tuple) -> dict:
    """prune_low_magnitude 50 % -> fine-tune -> strip -> pruning-preserving QAT -> int8 TFLite."""
    x_train, y_train, x_test, y_test = data
    tf_keras.utils.set_random_seed(0)
    base = tf_keras_compile(spec.tf_keras_build())
    base.fit(x_train, y_train, epochs=spec.epochs, batch_size=64, verbose=0)
    row = {"float_accuracy": accuracy(base, x_test, y_test), "params_before": base.count_params()}
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=20)
    pruned = tf_keras_compile(tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule))
    pruned.fit(x_train, y_train, epochs=spec.finetune, batch_size=64, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    row["zero_fraction_before_qat_per_kernel"] = kernel_zeros(stripped)
    row["pruned_float_accuracy"] = accuracy(stripped, x_test, y_test)
    row["params"] = stripped.count_params()
    annotated = tfmot.quantization.keras.quantize_annotate_model(stripped)
    qat = tfmot.quantization.keras.quantize_apply(
        annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    tf_keras_compile(qat).fit(x_train, y_train, epochs=spec.qat_epochs, batch_size=64, verbose=0)
    row["qat_accuracy"] = accuracy(qat, x_test, y_test)
    kernels = [w.numpy() for w in qat.weights if w.name.endswith("kernel:0")]
    row["zero_fraction_after_qat"] = float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))
    row["zero_fraction_after_qat_per_kernel"] = kernel_zeros(qat)
    row.update(tflite_eval(tfmot_convert(qat, x_train, sparse=False), x_test, y_test))
    row["sparse_bytes"] = len(tfmot_convert(qat, x_train, sparse=True))
    return row


def slimkit_unstructured(data: tuple, folder: str, op_types: list[str]) -> dict:
    """AGP 80 % on ``op_types`` -> fine-tune -> QAT stacked on the pruner -> int8 TFLite dense and sparse."""
    x_train, y_train, x_test, y_test = data
    model = train_float(x_train, y_train)
    row = {"float_accuracy": accuracy(model, x_test, y_test)}
    pruner = AGPPruner(model, [{"final_sparsity": 0.8, "end_epoch": 3, "op_types": op_types}])
    compile_classifier(pruner.compress(), 1e-3)
    model.fit(x_train, y_train, epochs=FINETUNE, batch_size=64, verbose=0, callbacks=[CompressionCallback(pruner)])
    row["pruned_float_accuracy"] = accuracy(model, x_test, y_test)
    quantizer = QATQuantizer(model, QAT_CONFIG, dummy_input=x_train[:1])
    compile_classifier(quantizer.compress(), 1e-3)
    model.fit(x_train, y_train, initial_epoch=FINETUNE, epochs=FINETUNE + QAT_EPOCHS, batch_size=64, verbose=0,
              callbacks=[CompressionCallback(pruner), CompressionCallback(quantizer)])
    row["qat_accuracy"] = accuracy(model, x_test, y_test)
    masks = pruner.get_masks()
    row["sparsity"] = float(sum((np.asarray(m["weight"]) == 0).sum() for m in masks.values())
                            / sum(np.asarray(m["weight"]).size for m in masks.values()))
    for tag, sparse in (("dense", False), ("sparse", True)):
        try:
            path = os.path.join(folder, f"agp80_{'_'.join(op_types)}_{tag}.tflite")
            flatbuffer = export_tflite(model, path, quantizer=quantizer, representative_data=x_train[:256],
                                       sparse_weights=sparse)
        except Exception as error:  # noqa: BLE001 - recorded in the results, as it happened
            row[tag] = {"error": f"{type(error).__name__}: {error}"}
            continue
        row[tag] = tflite_eval(flatbuffer, x_test, y_test)
    return row


def main(parts: list[str]) -> None:
    parts = parts or ["digits", "mobilenet", "unstructured"]
    data = load_digits_arrays()
    path = os.path.join(HERE, "results", "stacked_tfmot.json")
    result = {}
    if parts != ["digits", "mobilenet", "unstructured"] and os.path.exists(path):
        with open(path) as stream:
            result = json.load(stream)
    result.update({"machine": describe_machine(tensorflow=tf.__version__, keras=keras.__version__,
                                               tf_keras=tf_keras.__version__, tfmot=tfmot.__version__),
                   "interpreter": interpreter_class().__module__,
                   "settings": {"width": WIDTH, "epochs": EPOCHS, "finetune_epochs": FINETUNE,
                                "qat_epochs": QAT_EPOCHS, "slimkit_qat_config": QAT_CONFIG,
                                "mobilenet": {k: v for k, v in vars(SPECS["mobilenet"]).items() if "build" not in k}}})
    with tempfile.TemporaryDirectory() as folder:
        for name in ("digits", "mobilenet"):
            if name not in parts:
                continue
            spec = SPECS[name]
            assert spec.keras_build().count_params() == spec.tf_keras_build().count_params(), name  # the same model
            key = "filters_50" if name == "digits" else f"filters_50_{name}"
            result[key] = {"slimkit": slimkit_filters(spec, scaled(data, spec.scale), folder),
                           "tfmot": tfmot_magnitude(spec, scaled(data, spec.scale))}
        if "unstructured" in parts:
            # int8 Dense weights behind DENSIFY fail in XNNPACK (export_tflite's docstring): also without pruning Dense
            result["unstructured_80"] = {" + ".join(op_types): slimkit_unstructured(data, folder, op_types)
                                         for op_types in (["Conv2D", "Dense"], ["Conv2D"])}
    result["load_average_after"] = os.getloadavg()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(path, "w") as stream:
        json.dump(result, stream, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
