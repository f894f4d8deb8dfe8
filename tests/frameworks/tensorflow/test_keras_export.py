"""Export of a compressed Keras model: baked weights (.keras / .weights.h5), .npz masks, TFLite in LiteRT."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import slimkit
from slimkit import ConfigError
from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner
from slimkit.frameworks.tensorflow import CompressionCallback, export_tflite, run_tflite
from slimkit.frameworks.tensorflow.models import compile_classifier, digits_cnn, load_digits_arrays
from slimkit.frameworks.tensorflow.wrapper import wrapper_of


@pytest.fixture(scope="module")
def digits():
    return load_digits_arrays()


@pytest.fixture(scope="module")
def pruned(digits):
    """A width-16 digits CNN, trained briefly, L1-pruned at 50% and fine-tuned with the callback."""
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    model = compile_classifier(digits_cnn(width=16))
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}])
    model = compile_classifier(pruner.compress())
    model.fit(x_train, y_train, epochs=6, batch_size=64, verbose=0, callbacks=[CompressionCallback(pruner)])
    return pruner, model


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_round_trip_into_a_fresh_model(tmp_path, digits, pruned, suffix):
    pruner, model = pruned
    x_test = digits[2][:64]
    model_path, mask_path = tmp_path / f"pruned{suffix}", tmp_path / "mask.npz"
    pruner.export_model(model_path=model_path, mask_path=mask_path)
    assert sorted(os.listdir(tmp_path)) == sorted([model_path.name, mask_path.name])  # no temporaries left
    if suffix == ".keras":
        fresh = keras.models.load_model(model_path)
    else:
        fresh = digits_cnn(width=16)
        fresh.load_weights(model_path)
    assert all(wrapper_of(layer) is None for layer in fresh.layers)
    np.testing.assert_allclose(np.asarray(fresh(x_test)), np.asarray(model(x_test)), rtol=1e-4, atol=1e-5)
    masks = slimkit.load_masks(mask_path)
    assert sorted(masks) == ["conv1", "conv2", "conv3"]
    for name, entry in masks.items():
        np.testing.assert_array_equal(entry["weight"], np.asarray(pruner.get_masks()[name]["weight"]))
        kernel = fresh.get_layer(name).kernel.numpy()
        assert np.all(kernel[entry["weight"] == 0] == 0)
        assert entry["weight"].mean() == pytest.approx(0.5)
    assert masks["conv1"]["bias"] is None and masks["conv3"]["bias"].shape == (32,)
    # the mask file re-installs the same masks on a fresh model
    again = L1FilterPruner(digits_cnn(width=16), [{"sparsity": 0.5, "op_types": ["Conv2D"]}])
    again.load_masks(mask_path)
    for name, entry in again.get_masks().items():
        np.testing.assert_array_equal(np.asarray(entry["weight"]), masks[name]["weight"])
    # the compressed model is left as it was: still wrapped, raw weights unchanged
    assert wrapper_of(model.get_layer("conv1")) is not None
    assert np.any(model.get_layer("conv1").kernel.numpy()[np.asarray(masks["conv1"]["weight"]) == 0] != 0)


def test_bad_model_path_suffix(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Dense"]}])
    pruner.compress()
    with pytest.raises(ConfigError, match="weights.h5"):
        pruner.export_model(model_path=tmp_path / "model.h5")
    assert os.listdir(tmp_path) == []


def test_tflite_float_and_int8_run_in_litert(tmp_path, digits, pruned):
    x_train, _, x_test, y_test = digits
    _, model = pruned
    keras_accuracy = accuracy(np.asarray(model(x_test)), y_test)
    assert keras_accuracy > 0.9
    float_path, int8_path = tmp_path / "float.tflite", tmp_path / "int8.tflite"
    export_tflite(model, float_path)
    float_logits = run_tflite(float_path, x_test)
    np.testing.assert_allclose(float_logits, np.asarray(model(x_test)), rtol=1e-3, atol=1e-4)
    export_tflite(model, int8_path, representative_data=x_train[:200])
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(int8_path))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    int8_accuracy = accuracy(run_tflite(int8_path, x_test), y_test)
    assert int8_accuracy >= keras_accuracy - 0.03
    assert os.path.getsize(int8_path) < os.path.getsize(float_path)
    assert wrapper_of(model.get_layer("conv2")) is not None  # export leaves the model compressed


def test_saved_files_hold_only_the_original_weights(tmp_path):
    import h5py

    def keys(path):
        names = []
        with h5py.File(path) as handle:
            handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        return sorted(names)

    model = digits_cnn(width=4)
    model.save_weights(tmp_path / "plain.weights.h5")
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D", "Dense"]}])
    model = compile_classifier(pruner.compress())
    model.fit(np.zeros((4, 8, 8, 1)), np.zeros(4), verbose=0)  # the optimizer now has slots
    pruner.export_model(tmp_path / "pruned.weights.h5")
    model.save_weights(tmp_path / "wrapped.weights.h5")  # a plain Keras save of the compressed model
    assert keys(tmp_path / "pruned.weights.h5") == keys(tmp_path / "plain.weights.h5")
    assert [k for k in keys(tmp_path / "wrapped.weights.h5") if not k.startswith("optimizer/")] == keys(
        tmp_path / "plain.weights.h5")


class TinySubclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, name="conv")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.fc = keras.layers.Dense(3, name="fc")

    def call(self, x):
        return self.fc(self.pool(self.conv(x)))


def test_tflite_of_a_subclassed_model_needs_and_uses_representative_data(tmp_path):
    x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype(np.float32)
    model = TinySubclassed()
    model(x[:1])
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}])
    model = pruner.compress()
    with pytest.raises(ConfigError, match="representative_data"):
        export_tflite(model, tmp_path / "float.tflite")
    flatbuffer = export_tflite(model, tmp_path / "int8.tflite", representative_data=x)
    assert (tmp_path / "int8.tflite").read_bytes() == flatbuffer
    logits = run_tflite(flatbuffer, x)
    reference = np.asarray(model(x))
    assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max() + 1e-3
