"""Keras ``ModelSpeedup``: pruned functional / Sequential models rebuilt with fewer filters, output equal to the
masked (wrapped) model on several inputs, exact parameter counts, smaller TFLite files, and refusals."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner
from slimkit.errors import ConfigError, MaskError, SlimkitError, UnsupportedModelError, UnsupportedOpError
from slimkit.frameworks.tensorflow import export_tflite
from slimkit.frameworks.tensorflow.models import digits_cnn, mobilenet_style
from slimkit.speedup import ModelSpeedup

L = keras.layers


def mobile_params(stem: int, expand1: int, expand2: int, head: int) -> int:
    """Parameters of ``mobilenet_style()`` with the given channels (BatchNormalization: 4 per channel)."""
    return (27 * stem + 4 * stem + stem * expand1 + 4 * expand1 + 9 * expand1 + 4 * expand1 + expand1 * stem
            + 4 * stem + stem * expand2 + 4 * expand2 + 9 * expand2 + 4 * expand2 + expand2 * head + head + 4 * head
            + head * 10 + 10)


def multiplier() -> keras.Model:
    """A conv into a depth_multiplier=2 depthwise conv (valid padding) and a pointwise conv."""
    x = keras.Input((8, 8, 3))
    y = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(6, 3, padding="same", name="conv")(x)))
    y = L.ReLU()(L.BatchNormalization(name="dw_bn")(L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(y)))
    return keras.Model(x, L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="pw")(y))))


def concat() -> keras.Model:
    x = keras.Input((8, 8, 3))
    y = L.Concatenate()([L.ReLU()(L.Conv2D(6, 3, padding="same", name="a")(x)), L.Conv2D(4, 1, name="b")(x)])
    y = L.Conv2D(8, 3, name="c")(y)
    return keras.Model(x, L.Dense(3, name="fc")(L.GlobalMaxPooling2D()(y)))


def sequential() -> keras.Model:
    """Valid convs after BatchNormalization and a Flatten into Dense: pruned channels carry nonzero constants that
    the next layer folds into its bias."""
    return keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, name="c1"), L.BatchNormalization(name="bn1"),
                             L.ReLU(), L.Conv2D(8, 3, name="c2"), L.BatchNormalization(name="bn2"),
                             L.Activation("relu"), L.Flatten(), L.Dense(10, name="fc")], name="seq")


def separable() -> keras.Model:
    x = keras.Input((8, 8, 3))
    y = L.ReLU()(L.Conv2D(8, 3, padding="same", name="conv")(x))
    y = L.ReLU()(L.BatchNormalization(name="bn")(L.SeparableConv2D(8, 3, padding="same", depth_multiplier=2,
                                                                     name="sep1")(y)))
    y = L.SeparableConv2D(6, 3, name="sep2")(y)
    return keras.Model(x, L.Dense(4, name="fc")(L.GlobalAveragePooling2D()(y)))


def randomize_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Trained-looking BatchNormalization statistics: a pruned filter's zeros leave it as a nonzero constant."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.uniform(-0.5, 0.5, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.5, 2.0, n)])


def prune(model: keras.Model, config: list[dict], inputs: list[np.ndarray], **kwargs) -> tuple[dict, list]:
    """Masks of an L1FilterPruner and the masked (wrapped) model's outputs on ``inputs``; the model is left plain."""
    pruner = L1FilterPruner(model, config, **kwargs)
    pruner.compress()
    expected = [np.asarray(model(x, training=False)) for x in inputs]
    masks = pruner.get_masks()
    pruner.unwrap_model()
    return masks, expected


def batches(shape: tuple[int, ...], seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *shape)).astype("float32") for n in (1, 3, 5)]


def assert_same(small: keras.Model, inputs: list[np.ndarray], expected: list[np.ndarray]) -> None:
    for x, want in zip(inputs, expected):
        got = np.asarray(small(x, training=False))
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def kernel_params(model: keras.Model) -> int:
    """Parameters outside BatchNormalization (the TFLite converter folds those into the convs): a float file
    loses 4 bytes for each one removed."""
    return sum(layer.count_params() for layer in model.layers if not isinstance(layer, L.BatchNormalization))


def filters(model: keras.Model) -> dict[str, int]:
    return {layer.name: layer.filters for layer in model.layers if hasattr(layer, "filters")}


def test_digits_cnn_halved_exact_params_and_smaller_tflite(tmp_path):
    keras.utils.set_random_seed(0)
    model = digits_cnn(width=8)
    inputs = batches((8, 8, 1))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], inputs)
    speedup = ModelSpeedup(model, inputs[0], masks)
    small = speedup.speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"conv1": 4, "conv2": 8, "conv3": 8} and filters(model)["conv2"] == 16
    # conv1 9*1*4, bn1 4*4, conv2 9*4*8, bn2 4*8, conv3 9*8*8 + 8, fc 8*10 + 10
    assert small.count_params() == 36 + 16 + 288 + 32 + 584 + 90 == speedup.report.params_after
    assert model.count_params() == 72 + 32 + 1152 + 64 + 2320 + 170 == speedup.report.params_before
    before = export_tflite(model, tmp_path / "before.tflite")
    after = export_tflite(small, tmp_path / "after.tflite")
    assert len(after) < len(before) - 4 * (kernel_params(model) - kernel_params(small))
    assert [c.name for c in speedup.report.layers] == ["conv1", "bn1", "conv2", "bn2", "conv3", "fc"]


def test_constant_channel_before_a_padded_conv_is_kept():
    """A pruned conv1 filter whose BatchNormalization shift is positive outputs relu(beta) > 0 everywhere; conv2
    pads with zeros, so that channel cannot be folded away: it stays (its zero filter with it)."""
    keras.utils.set_random_seed(0)
    model = digits_cnn(width=8)
    inputs = batches((8, 8, 1))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], inputs)
    pruned = np.nonzero(~np.asarray(masks["conv1"]["weight"]).any((0, 1, 2)))[0]
    beta = np.full(8, -0.3, dtype="float32")
    beta[pruned[0]] = 0.7  # relu(0.7) reaches conv2 (padding='same'); the other pruned channels give relu(-0.3) = 0
    bn = model.get_layer("bn1")
    bn.set_weights([bn.gamma.numpy(), beta, bn.moving_mean.numpy(), bn.moving_variance.numpy()])
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}])
    pruner.compress()
    expected = [np.asarray(model(x, training=False)) for x in inputs]
    pruner.unwrap_model()
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"conv1": 5, "conv2": 8, "conv3": 8}
    keep = np.asarray(masks["conv1"]["weight"]).any((0, 1, 2)).astype("float32")
    masks["bn1"] = {"weight": keep, "bias": keep}  # the whole channel masked: BatchNormalization outputs 0 there
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_names": list(masks)}])  # only carries the masks
    pruner.load_masks(masks)
    expected = [np.asarray(model(x, training=False)) for x in inputs]
    pruner.unwrap_model()
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"conv1": 4, "conv2": 8, "conv3": 8}


def test_mobilenet_style_dependency_aware(tmp_path):
    keras.utils.set_random_seed(1)
    model = mobilenet_style()
    inputs = batches((16, 16, 3))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D", "DepthwiseConv2D"]}], inputs,
                            dependency_aware=True)
    speedup = ModelSpeedup(model, inputs[0], masks)
    small = speedup.speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"stem": 8, "b1_expand": 16, "b1_project": 8, "b2_expand": 24, "b2_project": 12}
    assert small.get_layer("b2_dw").kernel.shape == (3, 3, 24, 1)
    assert model.count_params() == mobile_params(16, 32, 48, 24)
    assert small.count_params() == mobile_params(8, 16, 24, 12) == speedup.report.params_after
    before = export_tflite(model, tmp_path / "before.tflite")
    after = export_tflite(small, tmp_path / "after.tflite")
    assert len(after) < len(before) - 4 * (kernel_params(model) - kernel_params(small))


def test_depth_multiplier_keeps_each_input_with_its_outputs():
    """Removing conv filter c removes depthwise input c with its 2 outputs; the BatchNormalization constants go
    through the valid depthwise conv and are folded into the pointwise conv's bias."""
    keras.utils.set_random_seed(5)
    model = multiplier()
    randomize_batch_norms(model)
    inputs = batches((8, 8, 3))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], inputs)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"conv": 3, "pw": 2}
    assert small.get_layer("dw").kernel.shape == (3, 3, 3, 2)
    # conv 27*3 + 3, bn 4*3, dw 9*3*2 + 6, dw_bn 4*6, pw 6*2 + 2, fc 2*2 + 2
    assert small.count_params() == 84 + 12 + 60 + 24 + 14 + 6


def masked_outputs(model: keras.Model, masks: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs with ``masks`` multiplied into its kernels and biases (restored after)."""
    saved = {name: model.get_layer(name).get_weights() for name in masks}
    for name, mask in masks.items():
        layer = model.get_layer(name)
        weights = layer.get_weights()
        weights[0] = weights[0] * np.asarray(mask["weight"])
        if mask.get("bias") is not None and len(weights) > 1:
            weights[1] = weights[1] * np.asarray(mask["bias"])
        layer.set_weights(weights)
    try:
        return [np.asarray(model(x, training=False)) for x in inputs]
    finally:
        for name, weights in saved.items():
            model.get_layer(name).set_weights(weights)


def test_mobilenet_style_trained_batch_norms():
    """With BatchNormalization shifts, a pruned filter whose BatchNormalization is not masked is a nonzero constant:
    the depthwise convs pruned with their expand convs output zeros whatever they receive, and the 1x1 convs and the
    head fold the rest into biases. The pruner's own masks also mask each BatchNormalization with its filter: then
    the pruned channels are zeros and no bias is needed."""
    keras.utils.set_random_seed(1)
    model = mobilenet_style()
    randomize_batch_norms(model)
    inputs = batches((16, 16, 3))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D", "DepthwiseConv2D"]}], inputs,
                            dependency_aware=True)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"stem": 8, "b1_expand": 16, "b1_project": 8, "b2_expand": 24, "b2_project": 12}
    assert [small.get_layer(n).use_bias for n in ("stem", "b1_expand", "b1_project", "b2_expand")] == [False] * 4
    assert small.count_params() == mobile_params(8, 16, 24, 12)

    conv_masks = {name: mask for name, mask in masks.items()
                  if not isinstance(model.get_layer(name), keras.layers.BatchNormalization)}
    assert len(conv_masks) < len(masks)
    small = ModelSpeedup(model, inputs[0], conv_masks).speedup_model()
    assert_same(small, inputs, masked_outputs(model, conv_masks, inputs))
    assert filters(small) == {"stem": 8, "b1_expand": 16, "b1_project": 8, "b2_expand": 24, "b2_project": 12}
    # the bias-free 1x1 convs after a folded constant get a bias: b1_expand 16, b1_project 8, b2_expand 24
    biased = [small.get_layer(n).use_bias for n in ("stem", "b1_expand", "b1_project", "b2_expand")]
    assert biased == [False, True, True, True]
    assert small.count_params() == mobile_params(8, 16, 24, 12) + 16 + 8 + 24


def test_concatenate():
    keras.utils.set_random_seed(2)
    model = concat()
    inputs = batches((8, 8, 3))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], inputs)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"a": 3, "b": 2, "c": 4}
    # a 27*3 + 3, b 3*2 + 2, c 9*5*4 + 4, fc 4*3 + 3
    assert small.count_params() == 84 + 8 + 184 + 15


def test_sequential_folds_constants_into_the_next_bias():
    keras.utils.set_random_seed(3)
    model = sequential()
    randomize_batch_norms(model)
    inputs = batches((8, 8, 1))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], inputs)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert isinstance(small, keras.Sequential)
    assert_same(small, inputs, expected)
    assert filters(small) == {"c1": 4, "c2": 4}
    # c1 9*4 + 4, bn1 4*4, c2 9*4*4 + 4, bn2 4*4, fc (4*4*4)*10 + 10 (Flatten keeps 4 of 8 channels per position)
    assert small.count_params() == 40 + 16 + 148 + 16 + 650
    assert model.count_params() == 80 + 32 + 584 + 32 + 1290


def test_separable_conv():
    keras.utils.set_random_seed(4)
    model = separable()
    randomize_batch_norms(model)
    inputs = batches((8, 8, 3))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D", "SeparableConv2D"]}], inputs)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"conv": 4, "sep1": 4, "sep2": 3}
    # conv 27*4 + 4; sep1 depthwise 9*4*2, pointwise 8*4, bias 4; bn 4*4; sep2 depthwise 9*4, pointwise 4*3, bias 3;
    # fc 3*4 + 4
    assert small.count_params() == 112 + (72 + 32 + 4) + 16 + (36 + 12 + 3) + 16
    assert model.count_params() == 224 + (144 + 128 + 8) + 32 + (72 + 48 + 6) + 28


def conv1d() -> keras.Model:
    x = keras.Input((16, 4))
    y = L.Conv1D(6, 3, padding="causal", name="c2")(L.ReLU()(L.Conv1D(8, 3, name="c1")(x)))
    return keras.Model(x, L.Dense(2, name="fc")(L.GlobalAveragePooling1D()(y)))


def transpose() -> keras.Model:
    x = keras.Input((4, 4, 3))
    y = L.Conv2DTranspose(6, 3, strides=2, name="t")(L.Conv2D(8, 3, padding="same", name="a")(x))
    y = L.Conv2D(4, 1, name="b")(L.ZeroPadding2D(1)(y))
    return keras.Model(x, L.Dense(2, name="fc")(L.Flatten()(y)))


def reshape() -> keras.Model:
    x = keras.Input((4, 4, 3))
    y = L.Conv1D(6, 1, name="b")(L.Reshape((16, 8), name="r")(L.Conv2D(8, 1, name="a")(x)))
    return keras.Model(x, L.Dense(2, name="fc")(L.Flatten()(L.UpSampling1D(2)(y))))


@pytest.mark.parametrize("build, op_types, shape, kept", [
    (conv1d, ["Conv1D"], (16, 4), {"c1": 4, "c2": 3}),
    (transpose, ["Conv2D", "Conv2DTranspose"], (4, 4, 3), {"a": 4, "t": 3, "b": 2}),
    (reshape, ["Conv2D", "Conv1D"], (4, 4, 3), {"a": 4, "b": 3}),
], ids=["conv1d", "conv2d_transpose", "reshape"])
def test_more_layers(build, op_types, shape, kept):
    keras.utils.set_random_seed(6)
    model = build()
    inputs = batches(shape)
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": op_types}], inputs)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == kept
    if build is reshape:
        assert small.get_layer("r").target_shape == (16, 4)


def test_mask_file_from_export_model(tmp_path):
    keras.utils.set_random_seed(7)
    model = concat()
    inputs = batches((8, 8, 3))
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}])
    pruner.compress()
    expected = [np.asarray(model(x, training=False)) for x in inputs]
    pruner.export_model(model_path=tmp_path / "model.weights.h5", mask_path=tmp_path / "mask.npz")
    pruner.unwrap_model()
    small = ModelSpeedup(model, inputs[0], tmp_path / "mask.npz").speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"a": 3, "b": 2, "c": 4}


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(4, 3, name="conv")

    def call(self, x):
        return self.conv(x)


def test_subclassed_model_is_refused():
    model = Subclassed()
    model(np.zeros((1, 8, 8, 3), "float32"))
    masks = {"conv": {"weight": np.ones((3, 3, 3, 4), "float32"), "bias": None}}
    with pytest.raises(UnsupportedModelError, match=r"subclassed model.*functional API"):
        ModelSpeedup(model, np.zeros((1, 8, 8, 3), "float32"), masks)


def test_nested_model_is_refused():
    inner = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv")], name="inner")
    x = keras.Input((8, 8, 3))
    model = keras.Model(x, inner(x))
    with pytest.raises(UnsupportedModelError, match="layer 'inner' .* nested model"):
        ModelSpeedup(model, np.zeros((1, 8, 8, 3), "float32"), {})


@pytest.mark.parametrize("masks, match", [
    ({"nope": {"weight": np.ones(3), "bias": None}}, "layer 'nope', which is not a layer with a weight"),
    ({"a": {"weight": np.ones((3, 3, 3, 5)), "bias": None}}, "weight mask of layer 'a' has the wrong shape"),
    ({"a": {"weight": np.full((3, 3, 3, 6), 0.5), "bias": None}}, "must hold only 0 and 1"),
    ({"a": {"weight": np.ones((3, 3, 3, 6)), "scale": None}}, "Expected the keys 'weight'"),
], ids=["unknown_layer", "shape", "values", "key"])
def test_bad_masks_are_refused_at_construction(masks, match):
    model = concat()
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(MaskError, match=match):
        ModelSpeedup(model, np.zeros((1, 8, 8, 3), "float32"), masks)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_wrapped_model_and_bad_dummy_input_are_refused():
    model = concat()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}])
    pruner.compress()
    with pytest.raises(SlimkitError, match=r"Layer 'a' is still wrapped.*unwrap_model\(\)"):
        ModelSpeedup(model, np.zeros((1, 8, 8, 3), "float32"), pruner.get_masks())
    masks = pruner.get_masks()
    pruner.unwrap_model()
    with pytest.raises(ConfigError, match=r"dummy_input does not fit.*\(None, 8, 8, 3\).*\(1, 8, 8, 4\)"):
        ModelSpeedup(model, np.zeros((1, 8, 8, 4), "float32"), masks)


def test_pruned_channel_reaching_a_layer_without_rule_names_it_and_the_fix():
    x = keras.Input((8, 8, 3))
    model = keras.Model(x, L.LayerNormalization(name="ln")(L.Conv2D(4, 3, name="a")(x)))
    masks, _ = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], [])
    with pytest.raises(UnsupportedOpError, match=r"reach layer 'ln' of type LayerNormalization.*'op_names': \['a'\]"):
        ModelSpeedup(model, np.zeros((1, 8, 8, 3), "float32"), masks).speedup_model()


def test_shared_layer_and_keras_ops():
    """A conv called on two inputs is rebuilt once (its calls see the same removed channels), and ``x + y`` /
    ``keras.ops.relu`` on tensors pass channels like layers."""
    keras.utils.set_random_seed(8)
    a, b = keras.Input((6, 6, 3)), keras.Input((6, 6, 3))
    shared = L.Conv2D(6, 3, name="shared")
    y = keras.ops.relu(shared(a) + shared(b))
    model = keras.Model([a, b], L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="pw")(y))))
    rng = np.random.default_rng(0)
    inputs = [[rng.standard_normal((n, 6, 6, 3)).astype("float32") for _ in range(2)] for n in (1, 4)]
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], inputs)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"shared": 3, "pw": 2}


def test_layers_without_rule_keep_their_weights_where_no_pruned_channel_reaches_them():
    """MultiHeadAttention (sublayers with repeated variable names) and LayerNormalization before the pruned layer
    are cloned with their own weights."""
    keras.utils.set_random_seed(9)
    x = keras.Input((4, 8))
    y = L.LayerNormalization(name="ln")(L.MultiHeadAttention(2, 4, name="mha")(x, x))
    y = L.GlobalAveragePooling1D()(L.Dense(6, name="b")(y))
    model = keras.Model(x, L.Dense(2, name="fc")(y))
    inputs = batches((4, 8))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_names": ["b"]}], inputs)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert small.get_layer("b").units == 3 and small.get_layer("fc").kernel.shape == (3, 2)


def test_softmax_activation_keeps_the_pruned_units():
    """A pruned unit of a Dense with softmax is not constant (softmax mixes the units): it stays."""
    keras.utils.set_random_seed(10)
    x = keras.Input((5,))
    model = keras.Model(x, L.Dense(2, name="fc")(L.Dense(6, activation="softmax", name="a")(L.Dense(4, name="s")(x))))
    inputs = batches((5,))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Dense"]}, {"exclude": True, "op_names": ["fc"]}],
                            inputs)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert [small.get_layer(n).units for n in ("s", "a", "fc")] == [2, 6, 2]


def test_prelu_channels_and_alpha():
    keras.utils.set_random_seed(11)
    x = keras.Input((6, 6, 3))
    y = L.PReLU(shared_axes=[1, 2], alpha_initializer=keras.initializers.RandomUniform(0.1, 0.5), name="p")(
        L.Conv2D(6, 3, name="a")(x))
    model = keras.Model(x, L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.Conv2D(4, 3, name="b")(y))))
    inputs = batches((6, 6, 3))
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], inputs)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    assert filters(small) == {"a": 3, "b": 2} and small.get_layer("p").alpha.shape == (1, 1, 3)


@pytest.mark.slow
def test_keras_applications_mobilenet_v2():
    """keras.applications MobileNetV2 (ZeroPadding2D, ReLU(6), residual Adds, depthwise convs) with trained-looking
    BatchNormalization statistics, 50 % dependency-aware: exact and smaller."""
    keras.utils.set_random_seed(12)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    randomize_batch_norms(model)
    inputs = batches((96, 96, 3))[:2]
    masks, expected = prune(model, [{"sparsity": 0.5, "op_types": ["Conv2D", "DepthwiseConv2D"]}], inputs,
                            dependency_aware=True)
    small = ModelSpeedup(model, inputs[0], masks).speedup_model()
    assert_same(small, inputs, expected)
    # measured once, a regression check (129,650 before the pruner masked each BatchNormalization with its filter)
    assert model.count_params() == 423_018 and small.count_params() == 121_978
