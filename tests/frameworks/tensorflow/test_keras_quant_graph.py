"""Graph-native fake quantization on Keras: the shared known tensors through the eager core, a traced
``tf.function`` and XLA give exactly the reference formulas' values, ranges and gradients; ``fit`` runs under
``jit_compile=True``; custom quantizers keep the ``tf.py_function`` path."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from slimkit.algorithms.quantization import (
    BNNQuantizer,
    DoReFaQuantizer,
    NaiveQuantizer,
    PostTrainingQuantizer,
    QATQuantizer,
)
from slimkit.compression.profiles import get_profile
from slimkit.compression.quant import affine_params
from slimkit.frameworks.tensorflow import CompressionCallback
from slimkit.frameworks.tensorflow.quant_graph import AFFINE, PYTHON, TRACED
from tests.algorithms.quantization.vectors import W, X, fake_quant_float32

PATHS = ["eager", "graph", "xla"]


def run(path: str, fn, *args):
    """``fn(*args)`` eagerly, traced by ``tf.function``, or XLA-compiled; returns numpy."""
    if path != "eager":
        fn = tf.function(fn, jit_compile=path == "xla")
    return tf.nest.map_structure(np.asarray, fn(*[tf.constant(a) for a in args]))


def dense() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False, name="fc")])
    model.get_layer("fc").kernel.assign(W.T)
    return model


def identity() -> keras.Model:
    return keras.Sequential([keras.Input((3,)), keras.layers.Identity(name="id")])


def per_channel_int8(kernel: np.ndarray) -> np.ndarray:
    scale = np.abs(kernel.astype(np.float64)).max(axis=0) / 127
    return fake_quant_float32(kernel, scale, np.zeros(2), -127, 127, axis=1)


@pytest.mark.parametrize("path", PATHS)
def test_naive_weight_is_the_per_channel_formula(path):
    model = NaiveQuantizer(dense(), [{"quant_types": ["weight"], "op_names": ["fc"]}]).compress()
    out = run(path, lambda x: model(x), np.eye(3, dtype=np.float32))  # eye @ kernel: the kernel itself
    np.testing.assert_array_equal(out, per_channel_int8(W.T))


@pytest.mark.parametrize("path", PATHS)
def test_qat_ema_range_parameters_output_and_gradient(path):
    qat = QATQuantizer(identity(), [{"quant_types": ["output"], "op_names": ["id"]}], ema_decay=0.5)
    model = qat.compress()

    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, x)

    run(path, train, X)
    out, grad = run(path, train, 2 * X)
    lo = 0.5 * X.min().astype(np.float64) + 0.5 * (2 * X).min().astype(np.float64)
    hi = 0.5 * X.max().astype(np.float64) + 0.5 * (2 * X).max().astype(np.float64)
    expected = affine_params(np.array([lo]), np.array([hi]), 8, get_profile("tflite").activation)
    params = qat.params["id"]["output"]
    assert (params.scale[0], params.zero_point[0], params.min[0], params.max[0]) == (
        expected.scale[0], expected.zero_point[0], expected.min[0], expected.max[0])
    assert qat.states["id"].observers["output"].range() == (np.array([lo]), np.array([hi]))
    reference = fake_quant_float32(2 * X, expected.scale, expected.zero_point, -128, 127)
    np.testing.assert_array_equal(out, reference)
    q = np.round(2 * X / np.float32(expected.scale[0])) + expected.zero_point[0]
    inside = (q >= -128) & (q <= 127)
    assert not inside.all()  # the EMA range is narrower than the second batch: some values clip
    np.testing.assert_array_equal(grad, np.where(inside, 2 * reference, 0.0))
    # inference: the range stays, the output is quantized with it
    out = run(path, lambda x: model(x, training=False), 10 * X)
    assert qat.states["id"].observers["output"].range() == (np.array([lo]), np.array([hi]))
    np.testing.assert_array_equal(out, fake_quant_float32(10 * X, expected.scale, expected.zero_point, -128, 127))


@pytest.mark.parametrize("path", ["graph", "xla"])
def test_quant_start_step_switches_a_traced_function_without_retracing(path):
    qat = QATQuantizer(dense(), [{"quant_types": ["weight"], "op_names": ["fc"], "quant_start_step": 2}])
    model = qat.compress()
    step = tf.function(lambda x: model(x, training=True), jit_compile=path == "xla")
    eye = tf.eye(3)
    for _ in range(2):
        np.testing.assert_array_equal(step(eye).numpy(), W.T)
        qat.step()
    np.testing.assert_array_equal(step(eye).numpy(), per_channel_int8(W.T))
    assert step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("algorithm", ["minmax", "kl"])
@pytest.mark.parametrize("path", PATHS)
def test_ptq_calibrated_parameters_in_the_graph(path, algorithm):
    ptq = PostTrainingQuantizer(identity(), [{"quant_types": ["output"], "op_names": ["id"]}], algorithm=algorithm,
                                progress=False)
    model = ptq.compress()
    before = run(path, lambda x: model(x, training=False), X)  # not calibrated: float
    np.testing.assert_array_equal(before, X)
    ptq.calibrate([X, 2 * X])
    params = ptq.params["id"]["output"]
    if algorithm == "minmax":
        assert (params.min[0], params.max[0]) == (min(X.min(), 2 * X.min()), max(X.max(), 2 * X.max()))
    out = run(path, lambda x: model(x, training=False), 3 * X)
    np.testing.assert_array_equal(out, fake_quant_float32(3 * X, params.scale, params.zero_point, -128, 127))


@pytest.mark.parametrize("cls, bits", [(DoReFaQuantizer, 2), (BNNQuantizer, 1)], ids=["dorefa", "bnn"])
@pytest.mark.parametrize("path", ["graph", "xla"])
def test_dorefa_and_bnn_trace_the_same_formulas_as_eager(path, cls, bits):
    quantizer = cls(dense(), [{"quant_types": ["weight", "output"], "quant_bits": bits, "op_names": ["fc"]}])
    model = quantizer.compress()
    assert set(quantizer._keras_graph.routes["fc"].values()) == {TRACED}

    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
            loss = tf.reduce_sum(y * y * y)
        return y, tape.gradient(loss, [x, model.get_layer("fc").kernel.value])

    x = np.array([[0.2, -0.1, 0.3], [0.9, 0.4, -0.8]], dtype=np.float32)
    eager, traced = run("eager", train, x), run(path, train, x)
    np.testing.assert_array_equal(traced[0], eager[0])
    for got, want in zip(traced[1], eager[1]):  # XLA fuses tanh's gradient: within an ulp there
        np.testing.assert_allclose(got, want, rtol=1e-6 if path == "xla" else 0, atol=0)
    if cls is BNNQuantizer:  # the sign of the binarized layer's output
        pre = x @ np.where(W.T >= 0, 1.0, -1.0)
        np.testing.assert_array_equal(traced[0], np.where(pre >= 0, 1.0, -1.0))


class MyQuantizer(QATQuantizer):
    def quantize_output(self, output, config, **kwargs):
        return output * 0.5


def test_routes_and_xla_per_quantizer():
    qat = QATQuantizer(dense(), [{"quant_types": ["weight", "output"], "op_names": ["fc"]}])
    model = qat.compress()
    assert qat._keras_graph.routes["fc"] == {qt: AFFINE for qt in qat._keras_graph.routes["fc"]}
    assert model.get_layer("fc").supports_jit is True
    graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(tf.TensorSpec([None, 3])).graph
    assert not any(op.type.endswith("PyFunc") for op in graph.get_operations())
    custom = MyQuantizer(dense(), [{"quant_types": ["weight", "output"], "op_names": ["fc"]}])
    model = custom.compress()
    routes = custom._keras_graph.routes["fc"]
    assert sorted(routes.values()) == [AFFINE, PYTHON]  # the overridden method only
    assert model.get_layer("fc").supports_jit is False
    out = tf.function(lambda x: model(x))(tf.eye(3)).numpy()
    np.testing.assert_array_equal(out, per_channel_int8(W.T) * 0.5)


def test_fit_under_xla_updates_ranges_and_counts_steps():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))
    data = np.random.default_rng(0).uniform(0, 1, size=(64, 8, 8, 1)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 3, size=64)
    qat = QATQuantizer(model, [{"quant_types": ["input", "weight", "output"], "op_types": ["Conv2D", "Dense"],
                                "quant_start_step": 2}])
    model = qat.compress()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    history = model.fit(data, labels, batch_size=16, epochs=2, verbose=0, callbacks=[CompressionCallback(qat)])
    assert model.jit_compile is True and qat.steps == 8
    assert np.all(np.isfinite(history.history["loss"]))
    lo, hi = qat.states["conv"].observers["input"].range()
    assert lo[0] >= 0.0 and 0.9 < hi[0] <= 1.0  # EMA of the batch minima / maxima of uniform [0, 1) images
    out = np.asarray(model.predict(data[:4], verbose=0))
    params = qat.params["fc"]["output"]
    q = out / params.scale[0] + params.zero_point[0]
    np.testing.assert_allclose(q, np.round(q), atol=1e-3)  # XLA-compiled predict is on the output grid


def test_python_and_the_graph_share_ranges_and_switches():
    """Loaded ranges reach the graph, the graph's EMA reaches the core, freeze() stops a traced function from
    observing, eager (Python) and traced steps continue each other's ranges, unwrapping hands plain dicts back."""
    qat = QATQuantizer(identity(), [{"quant_types": ["output"], "op_names": ["id"]}], ema_decay=0.5)
    model = qat.compress()
    step = tf.function(lambda x: model(x, training=True))
    scheme = get_profile("tflite").activation
    loaded = affine_params(np.array([-1.0]), np.array([3.0]), 8, scheme).as_dict("output")
    qat.load_calibration({"id": loaded})
    step(X)
    lo, hi = 0.5 * -1.0 + 0.5 * float(X.min()), 0.5 * 3.0 + 0.5 * float(X.max())
    assert qat.states["id"].observers["output"].range() == (np.array([lo]), np.array([hi]))
    qat.freeze()
    step(10 * X)
    assert qat.states["id"].observers["output"].range() == (np.array([lo]), np.array([hi]))
    qat.unfreeze()
    model(2 * X, training=True)  # eager: the Python core updates the range
    lo, hi = 0.5 * lo + 0.5 * float(2 * X.min()), 0.5 * hi + 0.5 * float(2 * X.max())
    out = step(X).numpy()  # traced: continues from the eager update
    lo, hi = 0.5 * lo + 0.5 * float(X.min()), 0.5 * hi + 0.5 * float(X.max())
    expected = affine_params(np.array([lo]), np.array([hi]), 8, scheme)
    np.testing.assert_array_equal(out, fake_quant_float32(X, expected.scale, expected.zero_point, -128, 127))
    qat.unwrap_model()
    assert type(qat.params["id"]) is dict and type(qat.states["id"].observers) is dict
    assert qat.params["id"]["output"].scale[0] == expected.scale[0]
    assert qat.states["id"].observers["output"].range() == (np.array([lo]), np.array([hi]))


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("path", ["graph", "xla"])
def test_depthwise_per_channel_weight_in_the_graph_equals_the_core(path, multiplier):
    model = keras.Sequential([keras.Input((6, 6, 3)),
                              keras.layers.DepthwiseConv2D(3, depth_multiplier=multiplier, name="dw")])
    kernel = model.get_layer("dw").kernel
    kernel.assign(np.random.default_rng(4).normal(size=kernel.shape).astype(np.float32))
    qat = QATQuantizer(model, [{"quant_types": ["weight"], "op_names": ["dw"]}])
    qat.compress()
    layer = qat.layers[0]
    graph = run(path, lambda w: qat._keras_graph.weight(layer, w), kernel.numpy())
    np.testing.assert_array_equal(graph, qat.forward_weight(layer, tf.constant(kernel.numpy())).numpy())
    assert len(qat.params["dw"]["weight"].scale) == 3 * multiplier
