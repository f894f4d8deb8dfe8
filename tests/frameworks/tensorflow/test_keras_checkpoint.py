"""The checkpoint contract on Keras (the same Compressor core): state_dict() saved mid-training, a rebuilt model
and compressor load it, and training goes on exactly as without the break."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from slimkit import NonFiniteError, SlimkitError
from slimkit.algorithms.pruning import AGPPruner, LevelPruner
from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.frameworks.tensorflow.callbacks import CompressionCallback
from slimkit.frameworks.tensorflow.wrapper import wrapper_of

X = np.random.default_rng(0).random((8, 8, 8, 1)).astype("float32")
Y = np.arange(8) % 10


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="c1"), keras.layers.ReLU(),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, name="fc")])


def _rebuilt(model: keras.Model, make: callable, state: dict) -> tuple[keras.Model, object]:
    rebuilt = _model()
    rebuilt.set_weights(model.get_weights())
    compressor = make(rebuilt)
    compressor.compress()
    compressor.load_state_dict(state)
    return rebuilt, compressor


def test_keras_agp_resumes_with_its_schedule_and_pruned_filters() -> None:
    def make(model: keras.Model) -> AGPPruner:
        return AGPPruner(model, [{"final_sparsity": 0.5, "end_epoch": 3, "op_types": ["Conv2D", "Dense"]}],
                         pruning_algorithm="l1")

    model = _model()
    pruner = make(model)
    pruner.compress()
    pruner.update_epoch(1)
    state = pruner.state_dict()
    assert isinstance(state["masks"]["c1"]["weight"], np.ndarray) and state["epoch"] == 1
    rebuilt, resumed = _rebuilt(model, make, state)
    for epoch in (2, 3):
        pruner.update_epoch(epoch)
        resumed.update_epoch(epoch)
    for name in ("c1", "fc"):
        assert np.array_equal(np.asarray(pruner.get_masks()[name]["weight"]),
                              np.asarray(resumed.get_masks()[name]["weight"])), name
    assert int((np.asarray(resumed.get_masks()["c1"]["weight"]).reshape(-1, 8).sum(axis=0) == 0).sum()) == 4
    assert np.array_equal(np.asarray(model(X)), np.asarray(rebuilt(X)))


def test_keras_qat_resumes_its_step_counter_and_ranges() -> None:
    def make(model: keras.Model) -> QATQuantizer:
        return QATQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Conv2D", "Dense"],
                                     "quant_start_step": 3}])

    model = _model()
    quantizer = make(model)
    quantizer.compress()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, epochs=1, batch_size=4, verbose=0, callbacks=[CompressionCallback(quantizer)])
    state = quantizer.state_dict()
    assert state["steps"] == 2  # quantization starts at step 3, after the checkpoint
    rebuilt, resumed = _rebuilt(model, make, state)
    assert resumed.steps == 2
    for compressor in (quantizer, resumed):
        compressor.step()  # the third step switches fake quantization on in both
    assert np.array_equal(np.asarray(model(X, training=False)), np.asarray(rebuilt(X, training=False)))
    ranges = resumed.state_dict()["observers"]
    for name, entry in state["observers"].items():
        assert np.array_equal(ranges[name]["output"]["lo"], entry["output"]["lo"]), name


def test_keras_nan_kernel_stops_a_pruner_before_it_wraps() -> None:
    model = _model()
    kernel = model.get_layer("c1").kernel
    kernel.assign(np.where(np.arange(kernel.numpy().size).reshape(kernel.shape) == 3, np.nan, kernel.numpy()))
    with pytest.raises(NonFiniteError, match=r"weight of layer 'c1' \(LevelPruner computes its mask from it\)"):
        LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D", "Dense"]}]).compress()
    assert wrapper_of(model.get_layer("c1")) is None and wrapper_of(model.get_layer("fc")) is None


def test_keras_calibration_with_a_bad_batch_leaves_the_model_unwrapped() -> None:
    model = _model()
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Conv2D", "Dense"]}],
                                progress=False)
    before = ptq.state_dict()
    with pytest.raises(SlimkitError, match="batch 1 could not run through the model"):
        ptq.calibrate([X, np.ones((2, 5, 5, 3), dtype="float32")])
    assert not ptq.wrapped and wrapper_of(model.get_layer("c1")) is None
    assert ptq.state_dict()["observers"] == before["observers"] == {"c1": {}, "fc": {}}
    ptq.calibrate([X])
    assert ptq.calibrated
