"""BatchNorm folding in Keras quantization: the folded layer equals conv + BN in inference, QAT fake-quantizes
the folded kernel per channel, training keeps the BN on batch statistics, and the int8 TFLite file of a
BN-folded QAT model on digits carries the folded weights' scales and agrees with the Keras model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.frameworks.tensorflow import CompressionCallback, export_tflite, run_tflite
from slimkit.frameworks.tensorflow.models import compile_classifier, digits_cnn, load_digits_arrays
from slimkit.frameworks.tensorflow.quant_fold import fold_bn
from tests.frameworks.tensorflow import test_keras_quant_export as export_tests

RNG = np.random.default_rng(3)
LAYERS = {
    "Conv2D": (lambda: keras.layers.Conv2D(4, 3, name="conv"), (6, 6, 3)),
    "Conv2D-no-bias": (lambda: keras.layers.Conv2D(4, 3, use_bias=False, name="conv"), (6, 6, 3)),
    "DepthwiseConv2D": (lambda: keras.layers.DepthwiseConv2D(3, name="conv"), (6, 6, 4)),
    "DepthwiseConv2D-x2": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="conv"), (6, 6, 2)),
    "Dense": (lambda: keras.layers.Dense(4, name="conv"), (5,)),
}


def conv_bn(kind: str, bn_kwargs: dict | None = None) -> tuple[keras.Model, np.ndarray]:
    """``layer -> BatchNormalization`` with random weights and moving statistics, and an input batch."""
    make, shape = LAYERS[kind]
    inputs = keras.Input(shape)
    x = make()(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn", **(bn_kwargs or {}))(x))
    for var in model.get_layer("conv").weights:
        var.assign(RNG.normal(scale=0.5, size=var.shape).astype(np.float32))
    bn = model.get_layer("bn")
    for var, value in ((bn.moving_mean, RNG.normal(size=4)), (bn.moving_variance, RNG.uniform(0.2, 3.0, size=4))):
        var.assign(value.astype(np.float32))
    for var in (v for v in (getattr(bn, "gamma", None), getattr(bn, "beta", None)) if v is not None):
        var.assign(RNG.uniform(0.5, 1.5, size=4).astype(np.float32))
    return model, RNG.normal(size=(3, *shape)).astype(np.float32)


def twin_with(model: keras.Model, kernel: np.ndarray, bias: np.ndarray | None) -> keras.layers.Layer:
    """A fresh copy of ``model``'s 'conv' layer holding ``kernel`` (and ``bias``, a bias even where it had none)."""
    layer = model.get_layer("conv")
    config = {**layer.get_config(), "name": "twin"}
    if bias is not None:
        config["use_bias"] = True
    twin = type(layer).from_config(config)
    twin.build(layer.input.shape)
    twin.set_weights([kernel] if bias is None else [kernel, bias])
    return twin


@pytest.mark.parametrize("bn_kwargs", [{}, {"scale": False, "center": False}], ids=["affine-bn", "plain-bn"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_folded_layer_equals_layer_then_bn_in_inference(kind, bn_kwargs):
    model, x = conv_bn(kind, bn_kwargs)
    kernel, bias = fold_bn(model.get_layer("conv"), model.get_layer("bn"))
    folded = twin_with(model, kernel, bias)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-5)


def per_channel(kernel: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Hand-computed int8 per-channel symmetric quantization of ``kernel`` over its channel ``axes`` (the last
    one, or a depthwise kernel's (in, multiplier)): (scale per channel, row-major; q(kernel))."""
    others = tuple(d for d in range(kernel.ndim) if d - kernel.ndim not in axes)
    amax = np.abs(kernel.astype(np.float64)).max(axis=others, keepdims=True)
    scale = amax / 127
    q = np.clip(np.round(kernel / scale.astype(np.float32)), -127, 127).astype(np.float32)
    return scale.reshape(-1), q * scale.astype(np.float32)


@pytest.mark.parametrize("kind", ["Conv2D-no-bias", "DepthwiseConv2D", "DepthwiseConv2D-x2", "Dense"])
def test_qat_fake_quantizes_the_folded_kernel(kind):
    model, x = conv_bn(kind)
    conv, bn = model.get_layer("conv"), model.get_layer("bn")
    folded_kernel, folded_bias = fold_bn(conv, bn)
    axes = {"DepthwiseConv2D": (-2,), "DepthwiseConv2D-x2": (-2, -1)}.get(kind, (-1,))
    scale, expected = per_channel(folded_kernel, axes)
    qat = QATQuantizer(model, [{"quant_types": ["weight"], "op_names": ["conv"]}], dummy_input=x[:1])
    model = qat.compress()
    np.testing.assert_array_equal(conv.quantized_weight(), expected)
    calibration = qat.calibration()["conv"]
    assert calibration["folded_bn"] == "bn"
    np.testing.assert_array_equal(calibration["weight_scale"], scale)
    # inference, eager and traced: the folded layer with the quantized folded kernel
    reference = np.asarray(twin_with(model, expected, folded_bias)(x))
    for out in (model(x, training=False), tf.function(lambda v: model(v, training=False))(x)):
        np.testing.assert_allclose(np.asarray(out), reference, rtol=1e-5, atol=1e-5)


def test_training_keeps_the_bn_on_batch_statistics_and_updates_its_moving_statistics():
    model, x = conv_bn("Conv2D")
    conv, bn = model.get_layer("conv"), model.get_layer("bn")
    factor = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    _, quantized = per_channel(fold_bn(conv, bn)[0], (-1,))
    twin = twin_with(model, quantized / factor, conv.bias.numpy())  # q(W f) / f
    reference_bn = keras.layers.BatchNormalization.from_config(bn.get_config())
    reference_bn.build(bn.input.shape)
    reference_bn.set_weights(bn.get_weights())
    expected = np.asarray(reference_bn(twin(x), training=True))
    moving_mean = bn.moving_mean.numpy()
    qat = QATQuantizer(model, [{"quant_types": ["weight"], "op_names": ["conv"]}], dummy_input=x[:1])
    model = qat.compress()
    out = tf.function(lambda v: model(v, training=True))(x)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_mean.numpy(), reference_bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(bn.moving_mean.numpy(), moving_mean)


def test_what_does_not_fold():
    model, x = conv_bn("Conv2D")
    without_graph = QATQuantizer(model, [{"quant_types": ["weight"], "op_names": ["conv"]}])  # no dummy_input
    without_graph.compress()
    assert without_graph.calibration()["conv"]["folded_bn"] is None
    without_graph.unwrap_model()
    inputs = keras.Input((6, 6, 3))
    y = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)  # its own activation before the BN
    shared = keras.layers.Conv2D(4, 3, name="shared")(inputs)  # two consumers
    outputs = [keras.layers.BatchNormalization(name="bn1")(y), keras.layers.BatchNormalization(name="bn2")(shared),
               keras.layers.ReLU()(shared)]
    ptq = PostTrainingQuantizer(keras.Model(inputs, outputs), [{"quant_types": ["weight"], "op_types": ["Conv2D"]}],
                                dummy_input=x[:1], progress=False)
    assert ptq.graph_plan.folds == {}


@pytest.mark.parametrize("relu", [False, True], ids=["after-bn", "after-relu"])
def test_a_folding_layer_output_is_quantized_where_the_fused_kernel_ends(tmp_path, relu):
    inputs = keras.Input((6, 6, 3))
    y = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    if relu:
        y = keras.layers.ReLU(name="relu")(y)
    model = keras.Model(inputs, keras.layers.Flatten(name="flat")(y))
    x = RNG.normal(size=(16, 6, 6, 3)).astype(np.float32)
    qat = QATQuantizer(model, [{"quant_types": ["input", "weight", "output"], "op_names": ["conv"]}],
                       dummy_input=x[:1])
    model = qat.compress()
    entry = qat.calibration()["conv"]
    assert (entry["folded_bn"], entry["fused_output_module"], entry["fused_activation"]) == (
        ("bn", "relu", "relu") if relu else ("bn", "bn", None))
    tf.function(lambda v: model(v, training=True))(x)  # observes the fused output's range
    lo, hi = qat.states["conv"].observers["output"].range()
    assert (lo[0] == 0.0) == relu and hi[0] > 0
    params = qat.params["conv"]["output"]
    for out in (model(x, training=False), tf.function(lambda v: model(v, training=False))(x)):
        q = np.asarray(out) / params.scale[0] + params.zero_point[0]
        np.testing.assert_allclose(q, np.round(q), atol=1e-3)  # the model's output is the quantized tensor
    flatbuffer = export_tflite(model, tmp_path / "fused.tflite", quantizer=qat)
    within = np.abs(run_tflite(flatbuffer, x) - np.asarray(model(x, training=False))) <= params.scale[0] * 1.0001
    assert within.mean() >= 0.99, within.mean()
    qat.unwrap_model()
    assert "call" not in vars(model.get_layer("relu" if relu else "bn"))


def test_fit_with_bn_folding_on_digits_and_int8_tflite_within_half_a_point(tmp_path):
    x_train, y_train, x_test, y_test = load_digits_arrays()
    keras.utils.set_random_seed(0)
    model = compile_classifier(digits_cnn(width=16))
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    config = [{"quant_types": ["input", "weight"], "op_names": ["conv1"]},
              {"quant_types": ["weight"], "op_names": ["conv2"]},
              {"quant_types": ["output"], "op_names": ["relu1", "relu2", "gap"]},
              {"quant_types": ["weight", "output"], "op_names": ["conv3", "fc"]}]
    qat = QATQuantizer(model, config, dummy_input=x_train[:1])
    model = qat.compress()
    assert {name: fold.bn.name for name, fold in qat.graph_plan.folds.items()} == {"conv1": "bn1", "conv2": "bn2"}
    compile_classifier(model)
    model.jit_compile = True
    history = model.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0, callbacks=[CompressionCallback(qat)])
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    keras_accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    flatbuffer = export_tflite(model, tmp_path / "digits_bn_folded.tflite", quantizer=qat)
    tflite_accuracy = float(np.mean(np.argmax(run_tflite(flatbuffer, x_test), -1) == y_test))
    assert keras_accuracy > 0.9, keras_accuracy
    assert abs(tflite_accuracy - keras_accuracy) <= 0.005, (keras_accuracy, tflite_accuracy)
    scales = export_tests.tensor_scales(flatbuffer)
    for name in ("conv1", "conv2"):  # the int8 conv weights carry the folded weights' per-channel scales
        expected = qat.params[name]["weight"].scale
        assert any(s.shape == expected.shape and np.allclose(s, expected, rtol=1e-5) for s in scales.values()), name
