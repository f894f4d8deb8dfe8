"""``export_tflite`` of a pruned Keras model: TF's EXPERIMENTAL_SPARSITY keeps the zeros and encodes them sparsely."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from slimkit import SlimkitError
from slimkit.algorithms.pruning import LevelPruner
from slimkit.frameworks.tensorflow import export_tflite, run_tflite
from tests.converter.conftest import op_codes
from tests.converter.test_sparse import decoded_weights


def test_pruned_keras_model_exports_sparse_weights(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 8)), keras.layers.Conv2D(64, 3, name="conv"), keras.layers.Flatten(),
                              keras.layers.Dense(300, name="fc"), keras.layers.Dense(10, name="out")])
    pruner = LevelPruner(model, [{"sparsity": 0.8, "op_types": ["Conv2D", "Dense"]}])
    model = pruner.compress()
    sparse, dense = tmp_path / "sparse.tflite", tmp_path / "dense.tflite"
    export_tflite(model, sparse)  # masks: sparse by default
    export_tflite(model, dense, sparse_weights=False)
    assert op_codes(sparse).count("DENSIFY") == 3 and "DENSIFY" not in op_codes(dense)
    assert sparse.stat().st_size < 0.35 * dense.stat().st_size

    x = np.random.default_rng(0).standard_normal((4, 8, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_tflite(sparse, x), run_tflite(dense, x))
    weights, encoded = decoded_weights(sparse)
    by_shape = {weights[name].shape: weights[name] for name in encoded}
    masked = {name: (layer.kernel * pruner.get_masks()[name]["weight"]).numpy()
              for name, layer in (("conv", model.get_layer("conv")), ("fc", model.get_layer("fc")),
                                  ("out", model.get_layer("out")))}
    # TFLite holds conv weights [out, kh, kw, in] and dense ones [out, in]: the masked kernels, zeros kept exactly
    np.testing.assert_array_equal(by_shape[(64, 3, 3, 8)], masked["conv"].transpose(3, 0, 1, 2))
    np.testing.assert_array_equal(by_shape[(300, 2304)], masked["fc"].T)
    np.testing.assert_array_equal(by_shape[(10, 300)], masked["out"].T)
    assert (by_shape[(300, 2304)] == 0).mean() >= 0.8


def test_int8_sparse_export_is_checked_in_litert(tmp_path):
    """int8 files are dense unless asked; asked, a file LiteRT cannot run (TF's int8 Dense behind DENSIFY) is refused
    with nothing written, and a conv-only one is written sparse."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((16, 8, 8, 8)).astype(np.float32)

    def conv():
        return [keras.Input((8, 8, 8)), keras.layers.Conv2D(64, 3, name="conv"), keras.layers.Conv2D(64, 3, name="c2")]

    model = keras.Sequential([*conv(), keras.layers.Flatten(), keras.layers.Dense(10, name="out")])
    model = LevelPruner(model, [{"sparsity": 0.9, "op_types": ["Conv2D", "Dense"]}]).compress()
    export_tflite(model, tmp_path / "default.tflite", representative_data=x)
    assert "DENSIFY" not in op_codes(tmp_path / "default.tflite")
    with pytest.raises(SlimkitError, match="FULLY_CONNECTED"):
        export_tflite(model, tmp_path / "dense_layer.tflite", representative_data=x, sparse_weights=True)
    assert not (tmp_path / "dense_layer.tflite").exists()

    convs = LevelPruner(keras.Sequential(conv()), [{"sparsity": 0.9, "op_types": ["Conv2D"]}]).compress()
    sparse, dense = tmp_path / "conv_sparse.tflite", tmp_path / "conv_dense.tflite"
    export_tflite(convs, sparse, representative_data=x, sparse_weights=True)
    export_tflite(convs, dense, representative_data=x)
    assert op_codes(sparse).count("DENSIFY") == 2 and sparse.stat().st_size < dense.stat().st_size
    np.testing.assert_array_equal(run_tflite(sparse, x[:4]), run_tflite(dense, x[:4]))
