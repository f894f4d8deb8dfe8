"""A SeparableConv2D's two kernels as two entries: ``'sep'`` (pointwise kernel + bias) and ``'sep/depthwise'``
(depthwise kernel, a ``'DepthwiseConv2D'``): each selectable, masked from its own weights, quantized on its own
per-channel grid, stacked (pruner then QAT), exported to int8 TFLite with its zeros, and sped up exactly."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner
from slimkit.algorithms.quantization import NaiveQuantizer, QATQuantizer
from slimkit.errors import CompositionError
from slimkit.frameworks.tensorflow import export_tflite, run_tflite
from slimkit.speedup import ModelSpeedup

L = keras.layers
RNG = np.random.default_rng(3)
X = RNG.uniform(0, 1, size=(16, 8, 8, 3)).astype(np.float32)
BOTH = ["SeparableConv2D", "DepthwiseConv2D"]


def separable_cnn(multiplier: int = 2) -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    y = L.SeparableConv2D(6, 3, depth_multiplier=multiplier, activation="relu", name="sep")(y)
    return keras.Model(inputs, L.Dense(3, name="fc")(L.GlobalAveragePooling2D(name="gap")(y)))


def kernels(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    sep = model.get_layer("sep")
    return sep.depthwise_kernel.numpy(), sep.pointwise_kernel.numpy()


def forward(model: keras.Model, depthwise: np.ndarray, pointwise: np.ndarray, bias: tf.Tensor | None = None
            ) -> np.ndarray:
    """The model's output with the separable layer computing with the given kernels (the rest as in the model)."""
    bias = model.get_layer("sep").bias if bias is None else bias
    y = model.get_layer("conv")(X)
    y = tf.nn.relu(tf.nn.separable_conv2d(y, depthwise, pointwise, [1, 1, 1, 1], "VALID") + bias)
    return np.asarray(model.get_layer("fc")(tf.reduce_mean(y, axis=(1, 2))))


def level_mask(weight: np.ndarray, sparsity: float) -> np.ndarray:
    k = round(sparsity * weight.size)
    threshold = np.sort(np.abs(weight).ravel())[k - 1]
    return (np.abs(weight) > threshold).astype(np.float32)


def channels(weight: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``weight`` as (positions, channels), the channels of ``axes`` read row-major (``c * multiplier + m``)."""
    return weight.reshape(-1, int(np.prod([weight.shape[a] for a in axes])))


def test_discovery_names_and_types():
    model = separable_cnn()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["DepthwiseConv2D"]}])
    assert [(layer.name, layer.type, layer.kernel) for layer in pruner.layers] == [
        ("sep/depthwise", "DepthwiseConv2D", "depthwise_kernel")]
    assert [layer.name for layer in LevelPruner(model, [{"sparsity": 0.5, "op_types": ["SeparableConv2D"]}]).layers] \
        == ["sep"]
    assert [layer.name for layer in LevelPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}]).layers] == [
        "conv", "sep", "sep/depthwise", "fc"]
    only = LevelPruner(model, [{"sparsity": 0.5, "op_names": ["sep/depthwise"]}])
    assert only.layers[0].out_axis == (-2, -1)


def test_level_masks_each_kernel_from_its_own_weights_and_applies_them():
    model = separable_cnn()
    depthwise, pointwise = kernels(model)
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": BOTH}, {"sparsity": 0.75, "op_names": ["sep"]}])
    pruner.compress()
    masks = pruner.get_masks()
    assert np.array_equal(masks["sep/depthwise"]["weight"].numpy(), level_mask(depthwise, 0.5))
    assert np.array_equal(masks["sep"]["weight"].numpy(), level_mask(pointwise, 0.75))
    assert masks["sep/depthwise"]["bias"] is None
    expected = forward(model, depthwise * level_mask(depthwise, 0.5), pointwise * level_mask(pointwise, 0.75))
    np.testing.assert_allclose(np.asarray(model(X)), expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(kernels(model)[0], depthwise)  # masks apply in the forward; variables untouched
    pruner.unwrap_model()
    assert "call" not in vars(model.get_layer("sep"))
    np.testing.assert_allclose(np.asarray(model(X)), forward(model, depthwise, pointwise), rtol=1e-5, atol=1e-6)


def test_l1_filter_on_each_kernel():
    model = separable_cnn(multiplier=2)
    depthwise, pointwise = kernels(model)
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": BOTH}])
    pruner.compress()
    masks = pruner.get_masks()
    # depthwise: 8 channels c * 2 + m, the 4 of smallest L1 norm removed
    norms = np.abs(channels(depthwise, (2, 3))).sum(0)
    kept = np.zeros(8, np.float32)
    kept[np.argsort(norms)[4:]] = 1
    assert np.array_equal(channels(masks["sep/depthwise"]["weight"].numpy(), (2, 3)), np.broadcast_to(kept, (9, 8)))
    # pointwise: 6 output filters, 3 removed, with their bias
    keep_out = np.zeros(6, np.float32)
    keep_out[np.argsort(np.abs(pointwise).sum((0, 1, 2)))[3:]] = 1
    assert np.array_equal(masks["sep"]["weight"].numpy(), np.broadcast_to(keep_out, pointwise.shape))
    assert np.array_equal(masks["sep"]["bias"].numpy(), keep_out)
    bias = model.get_layer("sep").bias * keep_out
    expected = forward(model, depthwise * kept.reshape(4, 2), pointwise * keep_out, bias)
    np.testing.assert_allclose(np.asarray(model(X)), expected, rtol=1e-5, atol=1e-6)


def test_naive_quantizer_puts_each_kernel_on_its_own_int_grid():
    model = separable_cnn(multiplier=2)
    depthwise, pointwise = kernels(model)
    quantizer = NaiveQuantizer(model, [{"quant_types": ["weight"], "op_types": BOTH}])
    quantizer.compress()
    sep = model.get_layer("sep")
    outputs = np.asarray(model(X))
    for kernel, weight, axes, name in (("depthwise_kernel", depthwise, (2, 3), "sep/depthwise"),
                                       (None, pointwise, (3,), "sep")):
        scale = np.abs(channels(weight, axes)).max(0) / 127
        np.testing.assert_allclose(quantizer.params[name]["weight"].scale, scale, rtol=1e-6)
        q = channels(sep.quantized_weight(kernel), axes) / scale
        assert np.abs(q - np.round(q)).max() < 1e-3 and np.abs(np.round(q)).max() == 127
        assert np.array_equal(np.round(q), np.round(channels(weight, axes) / scale))
    expected = forward(model, sep.quantized_weight("depthwise_kernel"), sep.quantized_weight())
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    assert set(quantizer.calibration()["sep/depthwise"]) >= {"weight_scale", "weight_axis"}


def test_kernel_entry_quantizes_its_weight_and_the_tensor_between_the_halves():
    model = separable_cnn()
    quantizer = QATQuantizer(model, [{"quant_types": ["input", "weight", "output"], "op_names": ["sep/depthwise"]}])
    assert [t.value for t in quantizer.states["sep/depthwise"].types] == ["weight", "output"]  # no input of its own
    quantizer = NaiveQuantizer(model, [{"quant_types": ["weight"], "op_names": ["sep/depthwise"]}])
    depthwise, pointwise = kernels(model)
    quantizer.compress()
    quantized = model.get_layer("sep").quantized_weight("depthwise_kernel")
    assert not np.array_equal(quantized, depthwise)
    np.testing.assert_allclose(np.asarray(model(X)), forward(model, quantized, pointwise), rtol=1e-5, atol=1e-6)


def prune_then_qat(model: keras.Model) -> tuple[LevelPruner, QATQuantizer]:
    pruner = LevelPruner(model, [{"sparsity": 0.6, "op_types": BOTH}])
    pruner.compress()
    quantizer = QATQuantizer(model, [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]},
                                     {"quant_types": ["output"], "op_names": ["gap"]}], dummy_input=X[:1])
    quantizer.compress()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.fit(X, RNG.normal(size=(16, 3)).astype(np.float32), batch_size=4, epochs=2, verbose=0)
    return pruner, quantizer


def test_composition_keeps_both_kernels_zeros_through_qat_and_int8_export(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = separable_cnn(multiplier=2)
    pruner, quantizer = prune_then_qat(model)
    masks = {name: entry["weight"].numpy() for name, entry in pruner.get_masks().items()}
    sep = model.get_layer("sep")
    assert sep.call.__self__ is quantizer.layer("sep/depthwise").wrapper  # one wrapper for both entries
    for kernel, name in (("depthwise_kernel", "sep/depthwise"), (None, "sep")):
        assert np.all(sep.quantized_weight(kernel)[masks[name] == 0] == 0)
    with pytest.raises(CompositionError, match="unwrap_model\\(\\) QATQuantizer first"):
        pruner.unwrap_model()

    with quantizer.backend.deploy(quantizer):
        deployed = np.asarray(model(X, training=False))
    flatbuffer = export_tflite(model, tmp_path / "sep.tflite", quantizer=quantizer)
    steps = np.abs(run_tflite(flatbuffer, X) - deployed) / quantizer.params["fc"]["output"].scale[0]
    assert steps.max() <= 1e-4  # exact: the tensor between the halves is quantized in the model too

    interpreter = Interpreter(model_content=flatbuffer)
    ops = {op["index"]: op["op_name"] for op in interpreter._get_ops_details()}
    weights = {}
    for op in interpreter._get_ops_details():
        if ops[op["index"]] in ("DEPTHWISE_CONV_2D", "CONV_2D"):
            detail = interpreter._get_tensor_details(op["inputs"][1], 0)
            weights.setdefault(ops[op["index"]], []).append(
                (interpreter.get_tensor(op["inputs"][1]), detail["quantization_parameters"]["scales"]))
    (depthwise_q, depthwise_scale), = weights["DEPTHWISE_CONV_2D"]
    # the tensor between the halves has the depthwise entry's output parameters
    [depthwise_op] = [op for op in interpreter._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D"]
    middle = interpreter._get_tensor_details(depthwise_op["outputs"][0], 0)["quantization_parameters"]
    output = quantizer.params["sep/depthwise"]["output"]
    np.testing.assert_allclose(middle["scales"], output.scale, rtol=1e-6)
    assert np.array_equal(middle["zero_points"], output.zero_point)
    pointwise_q, pointwise_scale = next(w for w in weights["CONV_2D"] if w[0].shape[1:3] == (1, 1))
    assert depthwise_q.dtype == np.int8 and pointwise_q.dtype == np.int8
    # the int8 depthwise kernel (1, kh, kw, c * m) and pointwise kernel (out, 1, 1, in * m) keep every masked zero
    assert np.all(depthwise_q[0][masks["sep/depthwise"].reshape(3, 3, 8) == 0] == 0)
    assert np.all(pointwise_q.transpose(1, 2, 3, 0)[masks["sep"] == 0] == 0)
    # and are exactly the quantizer's integers, on its scales
    scale = quantizer.params["sep/depthwise"]["weight"].scale
    np.testing.assert_allclose(depthwise_scale, scale, rtol=1e-6)
    expected = np.round(channels(sep.quantized_weight("depthwise_kernel"), (2, 3)) / scale).reshape(3, 3, 8)
    assert np.array_equal(depthwise_q[0], expected.astype(np.int8))


def test_speedup_exact_with_depthwise_entries():
    model = separable_cnn(multiplier=1)
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": BOTH}])
    pruner.compress()
    expected = np.asarray(model(X))
    masks = {name: {kind: None if mask is None else mask.numpy() for kind, mask in entry.items()}
             for name, entry in pruner.get_masks().items()}
    pruner.unwrap_model()
    small = ModelSpeedup(model, X[:1], masks).speedup_model()
    np.testing.assert_allclose(np.asarray(small(X)), expected, rtol=1e-5, atol=1e-6)
    assert small.get_layer("sep").filters == 3
    # depthwise 9*4 (its pruned channels are constant zeros, folded into nothing), pointwise 4*3 + 3, fc 3*3 + 3
    assert small.count_params() == model.count_params() - (4 * 3 + 3) - 3 * 3


def test_refusals_name_the_entry():
    from slimkit.errors import ConfigError

    model = separable_cnn()
    first = LevelPruner(model, [{"sparsity": 0.5, "op_names": ["sep"]}])
    first.compress()
    with pytest.raises(CompositionError, match="'sep/depthwise' is already wrapped by LevelPruner"):
        LevelPruner(model, [{"sparsity": 0.5, "op_names": ["sep/depthwise"]}]).compress()
    first.unwrap_model()
    config = [{"quant_types": ["weight", "output"], "op_types": ["default"]}, {"exclude": True, "op_names": ["sep"]}]
    with pytest.raises(ConfigError, match="kernel entry 'sep/depthwise' without its layer 'sep'"):
        QATQuantizer(model, config, dummy_input=X[:1])
    assert "call" not in vars(model.get_layer("sep"))


def test_state_dict_and_mask_file_carry_both_entries(tmp_path):
    from slimkit import load_masks

    model = separable_cnn()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": BOTH}])
    pruner.compress()
    masks = {name: entry["weight"].numpy() for name, entry in pruner.get_masks().items()}
    state = pruner.state_dict()
    fresh_model = separable_cnn()
    fresh = L1FilterPruner(fresh_model, [{"sparsity": 0.5, "op_types": BOTH}])
    fresh.load_state_dict(state)
    assert {name: entry["weight"].numpy() for name, entry in fresh.get_masks().items()}.keys() == masks.keys()
    for name, entry in fresh.get_masks().items():
        assert np.array_equal(entry["weight"].numpy(), masks[name])
    np.testing.assert_array_equal(np.asarray(fresh_model(X)), np.asarray(model(X)))
    pruner.export_model(tmp_path / "sep.weights.h5", mask_path=tmp_path / "masks.npz")
    assert np.array_equal(np.asarray(load_masks(tmp_path / "masks.npz")["sep/depthwise"]["weight"]),
                          masks["sep/depthwise"])
    plain = separable_cnn()
    plain.load_weights(tmp_path / "sep.weights.h5")
    assert np.array_equal(plain.get_layer("sep").depthwise_kernel.numpy(),
                          model.get_layer("sep").depthwise_kernel.numpy() * masks["sep/depthwise"])


def test_dependency_aware_couples_the_depthwise_entry_with_its_input_and_speedup_removes_them():
    from slimkit.frameworks.tensorflow.dependency import channel_groups

    model = separable_cnn(multiplier=1)
    assert [group.members for group in channel_groups(model)] == [["conv", "sep/depthwise"]]
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": BOTH + ["Conv2D"]}], dependency_aware=True,
                            dummy_input=X[:1])
    pruner.compress()
    masks = {name: {kind: None if mask is None else mask.numpy() for kind, mask in entry.items()}
             for name, entry in pruner.get_masks().items()}
    kept = masks["conv"]["bias"]
    assert kept.sum() == 2 and np.array_equal(masks["sep/depthwise"]["weight"], np.broadcast_to(kept[:, None],
                                                                                                 (3, 3, 4, 1)))
    expected = np.asarray(model(X))
    pruner.unwrap_model()
    small = ModelSpeedup(model, X[:1], masks).speedup_model()
    np.testing.assert_allclose(np.asarray(small(X)), expected, rtol=1e-5, atol=1e-6)
    assert small.get_layer("conv").filters == 2 and small.get_layer("sep").filters == 3
    assert small.get_layer("sep").depthwise_kernel.shape == (3, 3, 2, 1)


def test_activation_pruners_refuse_the_depthwise_entry_by_name():
    from slimkit.algorithms.pruning import ActivationAPoZRankFilterPruner
    from slimkit.errors import ConfigError

    model = separable_cnn()
    with pytest.raises(ConfigError, match=r"selects 'sep/depthwise'.*'exclude': True, 'op_names': \['sep/depthwise'\]"):
        ActivationAPoZRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}])
    pruner = ActivationAPoZRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["default"]},
                                                    {"exclude": True, "op_names": ["sep/depthwise"]}])
    pruner.compress()
    model(X)
    pruner.step()
    assert sorted(pruner.get_masks()) == ["conv", "fc", "sep"]
    assert pruner.get_masks()["sep"]["bias"].numpy().sum() == 3
