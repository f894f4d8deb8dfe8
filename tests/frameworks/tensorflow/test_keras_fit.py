"""Training a compressed Keras model: ``fit`` + CompressionCallback and a custom loop drive the schedule."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from slimkit.compression import Pruner
from slimkit.compression.sparsity import magnitude_mask
from slimkit.frameworks.tensorflow import CompressionCallback


class ScheduledLevelPruner(Pruner):
    """Magnitude pruning whose sparsity grows by 0.25 each epoch up to the configured value."""

    def __init__(self, model, config_list):
        super().__init__(model, config_list)
        self.epoch = 0
        self.steps = 0

    def calc_mask(self, layer, config, **kwargs):
        return magnitude_mask(layer.weight_array(), min(config.sparsity, 0.25 * self.epoch))

    def update_epoch(self, epoch):
        self.epoch = epoch
        self.update_masks()

    def step(self):
        self.steps += 1


def model_and_data():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="fc1"),
                              keras.layers.Dense(2, name="fc2")])
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    y = (x[:, :2] > 0).astype(np.float32)
    return model, x, y


def sparsity(pruner, name):
    return 1.0 - float(np.mean(np.asarray(pruner.get_masks()[name]["weight"])))


def test_fit_with_callback_follows_the_schedule():
    model, x, y = model_and_data()
    pruner = ScheduledLevelPruner(model, [{"sparsity": 0.5, "op_types": ["Dense"]}])
    model = pruner.compress()
    model.compile(optimizer="adam", loss="mse")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kernel = model.get_layer("fc1").kernel.numpy()
            mask = np.asarray(pruner.get_masks()["fc1"]["weight"])
            effective = model.get_layer("fc1")(x[:1])  # the layer itself applies its mask
            zeroed = np.maximum(x[:1] @ (kernel * mask) + model.get_layer("fc1").bias.numpy(), 0)
            np.testing.assert_allclose(np.asarray(effective), zeroed, rtol=1e-5, atol=1e-5)
            seen.append(round(sparsity(pruner, "fc1"), 4))

    model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[CompressionCallback(pruner), Record()])
    assert seen == [0.0, 0.25, 0.5, 0.5]
    assert pruner.steps == 4 * 4  # one step per batch


def test_custom_training_loop():
    model, x, y = model_and_data()
    pruner = ScheduledLevelPruner(model, [{"sparsity": 0.5, "op_types": ["Dense"]}])
    model = pruner.compress()
    optimizer = keras.optimizers.SGD(0.1)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xb, training=True) - yb) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    losses = []
    for epoch in range(3):
        pruner.update_epoch(epoch)
        for start in range(0, len(x), 8):
            losses.append(float(train_step(x[start:start + 8], y[start:start + 8])))
            pruner.step()
    assert round(sparsity(pruner, "fc2"), 4) == 0.5
    assert pruner.steps == 12
    assert np.isfinite(losses).all()


def _require(name):
    import slimkit.algorithms.pruning as pruning

    if not hasattr(pruning, name):
        pytest.skip(f"{name} is not in slimkit.algorithms.pruning yet")
    return getattr(pruning, name)


def test_agp_with_fit_follows_the_cubic_schedule():
    agp = _require("AGPPruner")
    model, x, y = model_and_data()
    pruner = agp(model, [{"final_sparsity": 0.5, "start_epoch": 0, "end_epoch": 2, "op_types": ["Dense"]}],
                 pruning_algorithm="level")
    model = pruner.compress()
    model.compile(optimizer="adam", loss="mse")
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(sparsity(pruner, "fc1")))
    model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[CompressionCallback(pruner), record])
    # agp_sparsity: s_t = 0.5 - 0.5 * (1 - t / 2) ** 3 -> 0, 0.4375, 0.5, 0.5 (8 x 16 = 128 weights)
    assert seen == [0.0, 0.4375, 0.5, 0.5]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_activation_statistics_are_gathered_inside_fit(jit_compile):
    apoz = _require("ActivationAPoZRankFilterPruner")
    model, x, y = model_and_data()
    model.compile(optimizer="adam", loss="mse", jit_compile=jit_compile)  # compiled before compress(): kept
    pruner = apoz(model, [{"sparsity": 0.5, "op_types": ["Dense"]}], statistics_batch_num=2)
    model = pruner.compress()
    assert not pruner.masks_ready
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[CompressionCallback(pruner)])
    assert pruner.masks_ready
    assert sparsity(pruner, "fc1") == 0.5 and sparsity(pruner, "fc2") == 0.5
    assert all(not layer.wrapper.hooks for layer in pruner.layers)
    assert model.jit_compile == jit_compile  # back to the compiled setting once the hooks are gone
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # keeps training after the hooks left
