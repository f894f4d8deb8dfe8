"""A pruner and then a quantizer on the same Keras layers, trained with ``fit`` (shared/API.md section 7).

The Keras digits CNN pruned by AGP (80 %, level rule) through ``CompressionCallback``, then QAT stacked on it
(BatchNorm folded) and trained on with both callbacks while the schedule finishes: SGD with momentum and weight
decay never moves a pruned weight, and ``export_tflite`` writes int8 weights with a zero at every masked position.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from slimkit import CompositionError
from slimkit.algorithms.pruning import AGPPruner, LevelPruner
from slimkit.algorithms.quantization import NaiveQuantizer, QATQuantizer
from slimkit.frameworks.tensorflow import CompressionCallback, export_tflite
from slimkit.frameworks.tensorflow.adapter import ADAPTER
from slimkit.frameworks.tensorflow.models import digits_cnn, load_digits_arrays
from slimkit.frameworks.tensorflow.quant_backend import QuantWrapper
from slimkit.frameworks.tensorflow.wrapper import MaskWrapper, wrapper_of
from tests.compression.test_composition import int8_weights

LAYERS = ["conv1", "conv2", "conv3", "fc"]
QAT_CONFIG = [{"quant_types": ["input", "weight"], "op_names": ["conv1"]},
              {"quant_types": ["weight"], "op_names": ["conv2"]},
              {"quant_types": ["output"], "op_names": ["relu1", "relu2", "gap"]},
              {"quant_types": ["weight", "output"], "op_names": ["conv3", "fc"]}]


def compiled(model: keras.Model) -> keras.Model:
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=5e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def zeros(masks) -> dict[str, int]:
    return {name: int(np.sum(np.asarray(entry["weight"]) == 0)) for name, entry in masks.items()}


def tflite_layout(mask: np.ndarray) -> np.ndarray:
    """A Keras kernel mask in TFLite's weight layout (Conv2D HWIO -> OHWI, Dense (in, out) -> (out, in))."""
    return np.transpose(mask, (3, 0, 1, 2)) if mask.ndim == 4 else mask.T


@pytest.fixture(scope="module")
def composed():
    """AGP (80 %, epochs 0..3) fit through epoch 1, QAT stacked on it and fit on through epoch 3 with both callbacks:
    (model, pruner, quantizer, masks when QAT began)."""
    keras.utils.set_random_seed(0)
    x, y = (array[:256] for array in load_digits_arrays()[:2])
    model = digits_cnn(width=8)
    pruner = AGPPruner(model, [{"final_sparsity": 0.8, "end_epoch": 3, "op_types": ["Conv2D", "Dense"]}],
                       pruning_algorithm="level")
    model = compiled(pruner.compress())
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[CompressionCallback(pruner)])
    at_qat = pruner.get_masks()
    quantizer = QATQuantizer(model, QAT_CONFIG, dummy_input=x[:1])
    model = compiled(quantizer.compress())
    model.fit(x, y, initial_epoch=2, epochs=4, batch_size=64, verbose=0,
              callbacks=[CompressionCallback(pruner), CompressionCallback(quantizer)])
    return model, pruner, quantizer, at_qat


def test_the_schedule_goes_on_and_pruned_weights_stay_exactly_zero_through_qat(composed):
    model, pruner, quantizer, at_qat = composed
    # epoch 1 of AGP's cubic 0 -> 0.8 over 3 epochs is 0.563 (of conv1's 72, conv2's 1152, conv3's 2304 and fc's 160
    # weights); the schedule reached 0.8 under QAT
    assert zeros(at_qat) == {"conv1": 41, "conv2": 649, "conv3": 1297, "fc": 90}
    masks = pruner.get_masks()
    assert zeros(masks) == {"conv1": 58, "conv2": 922, "conv3": 1843, "fc": 128}
    for name in LAYERS:
        layer = model.get_layer(name)
        wrapper = wrapper_of(layer)
        assert type(wrapper) is QuantWrapper and wrapper is pruner.layer(name).wrapper is quantizer.layer(name).wrapper
        assert [type(entry.owner) for entry in wrapper.attached] == [AGPPruner, QATQuantizer]
        pruned = np.asarray(masks[name]["weight"]) == 0
        assert bool(pruned[np.asarray(at_qat[name]["weight"]) == 0].all())   # once pruned, pruned under QAT too
        weight = np.asarray(layer.quantized_weight())   # masked, BN-folded, fake-quantized
        assert np.count_nonzero(weight[pruned]) == 0 and np.count_nonzero(weight[~pruned]) > 0, name


def test_export_tflite_and_export_model_keep_every_zero(composed, tmp_path):
    model, pruner, quantizer, _ = composed
    masks = {name: np.asarray(entry["weight"]) for name, entry in pruner.get_masks().items()}
    export_tflite(model, tmp_path / "sparse_int8.tflite", quantizer=quantizer)
    weights = int8_weights(tmp_path / "sparse_int8.tflite")
    assert len(weights) == len(LAYERS)
    for name, weight in zip(LAYERS, weights):
        pruned = tflite_layout(masks[name]) == 0
        assert weight.shape == pruned.shape
        assert np.count_nonzero(weight[pruned]) == 0 and np.count_nonzero(weight[~pruned]) > 0, name
    pruner.export_model(tmp_path / "pruned.weights.h5")
    plain = digits_cnn(width=8)
    plain.load_weights(tmp_path / "pruned.weights.h5")   # the original architecture, no slimkit
    for name in LAYERS:
        kernel = np.asarray(plain.get_layer(name).kernel)
        assert np.count_nonzero(kernel[masks[name] == 0]) == 0, name


def small() -> keras.Model:
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="a")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, name="b")(x))


def test_a_pruner_after_a_quantizer_is_refused_with_the_model_untouched():
    model = small()
    NaiveQuantizer(model, [{"quant_types": ["weight"], "op_names": ["b"]}]).compress()
    before = {name: wrapper_of(model.get_layer(name)) for name in "ab"}
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Dense"]}])
    with pytest.raises(CompositionError, match=r"Layer 'b' is already quantized by NaiveQuantizer.*Expected the "
                                                r"order pruner, then quantizer"):
        pruner.compress()
    assert {name: wrapper_of(model.get_layer(name)) for name in "ab"} == before and before["a"] is None


def test_two_pruners_are_refused_and_unwrapping_goes_in_reverse_order():
    model = small()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Dense"]}])
    pruner.compress()
    with pytest.raises(CompositionError, match=r"Layer 'a' is already wrapped by LevelPruner \(a pruner\)"):
        AGPPruner(model, [{"final_sparsity": 0.5, "end_epoch": 2, "op_names": ["a"]}]).compress()
    below = wrapper_of(model.get_layer("a"))
    seen = []
    handle = ADAPTER.add_output_hook(pruner.layer("a"), lambda out: seen.append(out.shape))  # an APoZ-style hook
    quantizer = NaiveQuantizer(model, [{"quant_types": ["weight"], "op_names": ["a"]}])
    quantizer.compress()
    model(np.ones((2, 4), dtype=np.float32))
    handle.remove()   # the pruner's handle reaches its hook under the quantizer's wrapper
    model(np.ones((2, 4), dtype=np.float32))
    assert seen == [(2, 4)]
    with pytest.raises(CompositionError, match=r"NaiveQuantizer is stacked on layer 'a'"):
        pruner.unwrap_model()
    mask = np.zeros((4, 4), dtype=np.float32)
    mask[0] = 1
    pruner.set_mask(pruner.layer("a"), mask)   # installed under the quantizer, read by its forward
    np.testing.assert_array_equal(np.asarray(quantizer.layer("a").wrapper.weight_mask), mask)
    quantizer.unwrap_model()
    assert wrapper_of(model.get_layer("a")) is below and type(below) is MaskWrapper
    np.testing.assert_array_equal(np.asarray(below.weight_mask), mask)
    pruner.unwrap_model()
    assert wrapper_of(model.get_layer("a")) is None and "call" not in vars(model.get_layer("a"))


def test_the_stacked_pair_resumes_from_its_state_dicts():
    def build(weights=None):
        keras.utils.set_random_seed(0)
        model = small()
        if weights is not None:
            model.set_weights(weights)
        pruner = AGPPruner(model, [{"final_sparsity": 0.75, "end_epoch": 3, "op_types": ["Dense"]}])
        pruner.compress()
        quantizer = QATQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Dense"]}])
        quantizer.compress()
        return model, pruner, quantizer

    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    model, pruner, quantizer = build()
    pruner.update_epoch(1)
    model(x, training=True)   # QAT observes output ranges
    quantizer.step()
    states = pruner.state_dict(), quantizer.state_dict()
    assert zeros(states[0]["masks"]) == {"a": 8, "b": 8} and states[1]["steps"] == 1
    rebuilt, resumed_pruner, resumed_quantizer = build(model.get_weights())
    resumed_pruner.load_state_dict(states[0])
    resumed_quantizer.load_state_dict(states[1])
    for compressors in ((pruner, quantizer), (resumed_pruner, resumed_quantizer)):
        compressors[0].update_epoch(2)   # the schedule goes on from the checkpoint in both
        compressors[1].step()
    assert zeros(resumed_pruner.get_masks()) == zeros(pruner.get_masks()) == {"a": 12, "b": 12}
    for name in "ab":
        np.testing.assert_array_equal(np.asarray(resumed_pruner.get_masks()[name]["weight"]),
                                      np.asarray(pruner.get_masks()[name]["weight"]))
    np.testing.assert_array_equal(np.asarray(rebuilt(x, training=False)), np.asarray(model(x, training=False)))
