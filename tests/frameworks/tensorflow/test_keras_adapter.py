"""Keras adapter: discovery across model kinds, wrapping semantics, gradients, hooks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from slimkit import CompressionStateError, ConfigError
from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner
from slimkit.compression import Pruner
from slimkit.frameworks.tensorflow.adapter import ADAPTER
from slimkit.frameworks.tensorflow.wrapper import wrapper_of


def functional():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv1 = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
        self.bn1 = keras.layers.BatchNormalization(name="bn1")
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.fc = keras.layers.Dense(3, name="fc")

    def call(self, x, training=False):
        return self.fc(self.pool(tf.nn.relu(self.bn1(self.conv1(x), training=training))))


def subclassed():
    model = Subclassed()
    model(np.zeros((1, 6, 6, 2), np.float32))
    return model


def sequential():
    return keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, padding="same", name="conv1"),
                             keras.layers.BatchNormalization(name="bn1"), keras.layers.ReLU(name="relu"),
                             keras.layers.GlobalAveragePooling2D(name="pool"), keras.layers.Dense(3, name="fc")])


def nested():
    head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")], name="head")
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, head(x))


BUILDERS = {"functional": functional, "sequential": sequential, "subclassed": subclassed, "nested": nested}
X = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype(np.float32)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_discovery_roles_and_wrapping_on_every_model_kind(kind):
    model = BUILDERS[kind]()
    refs = {ref.name: ref.type for ref in ADAPTER.discover(model)}
    fc = "head/fc" if kind == "nested" else "fc"
    assert refs["conv1"] == "Conv2D" and refs[fc] == "Dense"
    before = [w.numpy().copy() for w in model.weights]
    reference = np.asarray(model(X))
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}])
    assert [layer.name for layer in pruner.layers] == ["conv1", fc]
    returned = pruner.compress()
    assert returned is model
    out = np.asarray(model(X))
    # pruned filters of conv1 must behave as zero filters: compare with a hand-masked copy
    mask = np.asarray(pruner.get_masks()["conv1"]["weight"])
    assert mask.sum(axis=(0, 1, 2)).tolist().count(0.0) == 2
    assert not np.allclose(out, reference)
    for w, b in zip(model.weights, before):  # the wrapped layers' variables are never written
        np.testing.assert_array_equal(w.numpy(), b)
    assert len(model.weights) == len(before)  # masks are not model weights
    pruner.unwrap_model()
    assert wrapper_of(model.get_layer("conv1") if kind != "subclassed" else model.conv1) is None
    np.testing.assert_allclose(np.asarray(model(X)), reference, rtol=1e-6)  # exact inverse


def test_masked_output_equals_model_with_zeroed_weights():
    model = functional()
    pruner = LevelPruner(model, [{"sparsity": 0.6, "op_types": ["Conv2D", "Dense"]}])
    pruner.compress()
    out = np.asarray(model(X))
    zeroed = functional()
    zeroed.set_weights(model.get_weights())
    for name in ("conv1", "fc"):
        layer = zeroed.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * np.asarray(pruner.get_masks()[name]["weight"]), bias])
    np.testing.assert_allclose(out, np.asarray(zeroed(X)), rtol=1e-5, atol=1e-6)


def test_gradients_reach_only_unmasked_weights():
    model = functional()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Dense"]}])
    pruner.compress()
    kernel = model.get_layer("fc").kernel
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(X, training=True) ** 2)
    grad = tape.gradient(loss, kernel).numpy()
    mask = np.asarray(pruner.get_masks()["fc"]["weight"])
    assert np.all(grad[mask == 0] == 0) and np.any(grad[mask == 1] != 0)


def test_batchnorm_role_weight_is_gamma_and_moving_stats_still_update():
    model = functional()
    bn = model.get_layer("bn1")
    bn.gamma.assign(np.array([0.1, 2.0, 0.3, 4.0], np.float32))

    class GammaPruner(Pruner):
        default_op_role = "batchnorm"

        def calc_mask(self, layer, config, **kwargs):
            gamma = layer.weight_array()
            return {"weight": (np.abs(gamma) > 1).astype(np.float32), "bias": (np.abs(gamma) > 1).astype(np.float32)}

    pruner = GammaPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}])
    assert [layer.name for layer in pruner.layers] == ["bn1"]
    pruner.compress()
    np.testing.assert_array_equal(np.asarray(pruner.get_masks()["bn1"]["weight"]), [0, 1, 0, 1])
    before = bn.moving_mean.numpy().copy()
    model(X, training=True)
    assert not np.allclose(bn.moving_mean.numpy(), before)
    np.testing.assert_array_equal(bn.gamma.numpy(), np.array([0.1, 2.0, 0.3, 4.0], np.float32))
    features = keras.Model(model.input, model.get_layer("bn1").output)
    out = np.asarray(features(X, training=False))
    assert np.all(out[..., 0] == 0) and np.all(out[..., 2] == 0)


def test_output_hook_sees_outputs_eagerly_and_inside_fit():
    model = functional()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}])
    model = pruner.compress()
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    model.fit(X, np.zeros((4, 3)), epochs=1, batch_size=2, verbose=0)  # traced without the hook
    seen = []
    handle = ADAPTER.add_output_hook(pruner.layer("conv1"), lambda out: seen.append(out.shape))
    assert ADAPTER.activation_axis(pruner.layer("conv1").module) == -1
    model(X)
    assert seen == [(4, 6, 6, 4)]
    model.fit(X, np.zeros((4, 3)), epochs=1, batch_size=2, verbose=0)
    assert seen[1:] == [(2, 6, 6, 4)] * 2
    handle.remove()
    model.fit(X, np.zeros((4, 3)), epochs=1, batch_size=2, verbose=0)
    assert len(seen) == 3
    assert model.jit_compile  # XLA was off only while the hook was attached


def test_errors():
    model = functional()
    LevelPruner(model, [{"sparsity": 0.5, "op_names": ["fc"]}]).compress()
    with pytest.raises(CompressionStateError, match="already wrapped"):
        LevelPruner(model, [{"sparsity": 0.5, "op_names": ["fc"]}]).compress()
    with pytest.raises(ConfigError, match="no weight to prune"):
        LevelPruner(model, [{"sparsity": 0.5, "op_types": ["ReLU"]}])
    with pytest.raises(ConfigError, match="op_names"):
        LevelPruner(model, [{"sparsity": 0.5, "op_names": ["nope"]}])
    assert ADAPTER.activation_axis(keras.layers.Conv2D(2, 3, data_format="channels_first")) == 1
    assert ADAPTER.activation_axis(keras.layers.Dense(2)) == -1
    assert ADAPTER.out_axis(keras.layers.Conv1DTranspose(2, 3)) == -2
    assert ADAPTER.out_axis(keras.layers.DepthwiseConv2D(3, depth_multiplier=2)) == (-2, -1)
    unbuilt = keras.Sequential([keras.layers.Dense(2, name="fc")])
    with pytest.raises(CompressionStateError, match="not built"):
        LevelPruner(unbuilt, [{"sparsity": 0.5, "op_types": ["Dense"]}])


class MyConv(keras.layers.Conv2D):
    """A library's own Conv2D subclass."""


def test_op_types_match_keras_base_classes_by_short_name():
    inputs = keras.Input((6, 6, 2))
    x = MyConv(4, 3, name="mine")(keras.layers.Conv2D(2, 3, name="plain")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))
    by_base = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}])
    assert [(layer.name, layer.type) for layer in by_base.layers] == [("plain", "Conv2D"), ("mine", "MyConv")]
    assert [layer.name for layer in LevelPruner(model, [{"sparsity": 0.5, "op_types": ["MyConv"]}]).layers] == [
        "mine"]
    assert [layer.name for layer in LevelPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}]).layers] == [
        "plain", "mine", "fc"]
