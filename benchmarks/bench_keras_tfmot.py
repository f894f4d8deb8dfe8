"""slimkit (Keras 3) beside TensorFlow Model Optimization (tfmot, on tf-keras): 50% magnitude pruning
of the digits CNN's Conv2D and Dense layers, accuracy after fine-tuning, and ``fit`` time per step.

tfmot needs tf-keras, which the project environment (Keras 3) does not have. ``make bench-tfmot`` builds
a separate environment, ``.venv-tfmot`` (TensorFlow, Keras 3, tf-keras, tfmot and slimkit, no torch;
versions pinned by ``constraints.txt`` and ``benchmarks/constraints-tfmot.txt``), and runs this script
in it:

    make bench-tfmot

Writes benchmarks/results/keras_tfmot.json (``bench_keras.py`` adds it to RESULTS_keras.md).
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras (and so tfmot) -> tf-keras; `import keras` stays Keras 3

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402

from slimkit.algorithms.pruning import LevelPruner  # noqa: E402
from slimkit.frameworks.tensorflow import CompressionCallback  # noqa: E402
from slimkit.frameworks.tensorflow.models import compile_classifier, digits_cnn, load_digits_arrays  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS, FINETUNE, WIDTH, SPARSITY = 10, 8, 32, 0.5


def tf_keras_cnn(width: int = WIDTH) -> tf_keras.Model:
    """The same architecture as slimkit.frameworks.tensorflow.models.digits_cnn, in tf-keras."""
    layers = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 1))
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.9, name="bn1")(x))
    x = layers.Conv2D(width * 2, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.9, name="bn2")(x))
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(width * 2, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return tf_keras.Model(inputs, layers.Dense(10, name="fc")(x))


def tf_keras_compile(model: tf_keras.Model) -> tf_keras.Model:
    model.compile(optimizer=tf_keras.optimizers.Adam(3e-3),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def zero_fraction(kernels) -> float:
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


def fit_seconds_per_step(model, x, y, callbacks, epochs: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per step of one ``fit`` epoch, ``epochs`` times."""
    steps = int(np.ceil(len(x) / 64))
    out = []
    for _ in range(epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=callbacks)
        out.append(((time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps))
    return out


def main() -> None:
    x_train, y_train, x_test, y_test = load_digits_arrays()
    result = {"settings": {"width": WIDTH, "epochs": EPOCHS, "finetune_epochs": FINETUNE, "sparsity": SPARSITY,
                           "pruned_layers": "conv1, conv2, conv3, fc (fine-grained magnitude)"},
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                           "tf_keras": tf_keras.__version__, "tfmot": tfmot.__version__},
              "load_average_1m": os.getloadavg()[0]}

    # slimkit on Keras 3
    keras.utils.set_random_seed(0)
    model = compile_classifier(digits_cnn(width=WIDTH))
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=0)
    slim_float = accuracy(model, x_test, y_test)
    pruner = LevelPruner(model, [{"sparsity": SPARSITY, "op_types": ["Conv2D", "Dense"]}])
    model = compile_classifier(pruner.compress())
    slim_callbacks = [CompressionCallback(pruner)]
    model.fit(x_train, y_train, epochs=FINETUNE, batch_size=64, verbose=0, callbacks=slim_callbacks)
    masks = pruner.get_masks()
    slim = {"float_accuracy": slim_float, "pruned_accuracy": accuracy(model, x_test, y_test),
            "sparsity": zero_fraction([np.asarray(m["weight"]) for m in masks.values()])}
    plain = compile_classifier(digits_cnn(width=WIDTH))

    # tfmot on tf-keras
    tf_keras.utils.set_random_seed(0)
    base = tf_keras_compile(tf_keras_cnn())
    base.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=0)
    tfmot_float = accuracy(base, x_test, y_test)
    schedule = tfmot.sparsity.keras.ConstantSparsity(SPARSITY, begin_step=0, frequency=20)

    def clone(layer):
        if isinstance(layer, (tf_keras.layers.Conv2D, tf_keras.layers.Dense)):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = tf_keras_compile(tf_keras.models.clone_model(base, clone_function=clone))
    tfmot_callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    pruned.fit(x_train, y_train, epochs=FINETUNE, batch_size=64, verbose=0, callbacks=tfmot_callbacks)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    tfmot_row = {"float_accuracy": tfmot_float, "pruned_accuracy": accuracy(stripped, x_test, y_test),
                 "sparsity": zero_fraction([layer.kernel.numpy() for layer in stripped.layers
                                            if isinstance(layer, (tf_keras.layers.Conv2D, tf_keras.layers.Dense))])}
    plain_tf_keras = tf_keras_compile(tf_keras_cnn())

    # fit time per step, the four models round-robin so machine load hits them alike
    runs = {"Keras 3 plain": (plain, []), "Keras 3 + slimkit LevelPruner": (model, slim_callbacks),
            "tf-keras plain": (plain_tf_keras, []), "tf-keras + tfmot prune_low_magnitude": (pruned, tfmot_callbacks)}
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for m, cbs in runs.values():
        fit_seconds_per_step(m, x_train, y_train, cbs, 1)  # warm up (trace)
    for _ in range(6):
        for name, (m, cbs) in runs.items():
            timings[name] += fit_seconds_per_step(m, x_train, y_train, cbs, 1)
    result["accuracy"] = {"slimkit": slim, "tfmot": tfmot_row}
    result["fit_step"] = {name: {"median_wall_ms": 1000 * statistics.median(t[0] for t in values),
                                 "median_cpu_ms": 1000 * statistics.median(t[1] for t in values)}
                          for name, values in timings.items()}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "keras_tfmot.json"), "w") as stream:
        json.dump(result, stream, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
