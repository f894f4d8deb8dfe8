"""The same pruner classes give the same masks on a PyTorch model and on the Keras model built
with the same weights (transposed to Keras' layout), and those masks are the expected ones."""

from __future__ import annotations

from collections import OrderedDict

import keras
import numpy as np
import pytest
import torch

from slimkit.algorithms.pruning import FPGMPruner, L1FilterPruner, L2FilterPruner, LevelPruner
from tests.frameworks.tensorflow.keras_layouts import TO_KERAS, depthwise_to_keras

# Shared test vectors, in PyTorch layout. Conv filters chosen so that L1 and L2 rank them differently:
#   f0 = [3, 0, 0, 0]       L1 3  L2 3
#   f1 = [1, 1, 1, 1]       L1 4  L2 2
#   f2 = [0.5, 0.6, 0, 0]   L1 1.1 L2 0.78
#   f3 = [2, -2, 0, 0]      L1 4  L2 2.83
CONV_W = np.array([[3, 0, 0, 0], [1, -1, 1, 1], [0.5, 0.6, 0, 0], [2, -2, 0, 0]], np.float32).reshape(4, 1, 2, 2)
CONV_B = np.array([0.1, -0.2, 0.3, 0.4], np.float32)
FC_W = np.array([[0.1, -0.9, 0.5, 0.3], [1.2, -0.2, 0.05, 0.7], [-0.4, 0.8, 0.6, -1.1]], np.float32)
FC_B = np.array([0.0, 0.5, -0.5], np.float32)

# Expected masks in PyTorch layout.
LEVEL_CONV = (np.abs(CONV_W) > 0.5).astype(np.float32)  # 7 zeros and the 0.5 go
LEVEL_FC = (np.abs(FC_W) > 0.5).astype(np.float32)  # 0.05, 0.1, 0.2, 0.3, 0.4, 0.5 go
EXPECTED = {
    LevelPruner: {"conv": LEVEL_CONV, "fc": LEVEL_FC},
    L1FilterPruner: {"conv": np.array([0, 1, 0, 1], np.float32)[:, None, None, None] * np.ones_like(CONV_W),
                     "fc": np.array([0, 0, 1], np.float32)[:, None] * np.ones_like(FC_W)},
    L2FilterPruner: {"conv": np.array([1, 0, 0, 1], np.float32)[:, None, None, None] * np.ones_like(CONV_W),
                     "fc": np.array([0, 0, 1], np.float32)[:, None] * np.ones_like(FC_W)},
}
EXPECTED_BIAS = {L1FilterPruner: {"conv": [0, 1, 0, 1], "fc": [0, 0, 1]},
                 L2FilterPruner: {"conv": [1, 0, 0, 1], "fc": [0, 0, 1]}}



def to_torch(kind: str, array: np.ndarray) -> np.ndarray:
    return np.transpose(array, np.argsort(TO_KERAS[kind]))


def build(framework: str):
    """The conv -> relu -> global pool -> linear model with the shared weights."""
    if framework == "torch":
        model = torch.nn.Sequential(OrderedDict(
            conv=torch.nn.Conv2d(1, 4, 2), relu=torch.nn.ReLU(), pool=torch.nn.AdaptiveAvgPool2d(1),
            flatten=torch.nn.Flatten(), fc=torch.nn.Linear(4, 3)))
        with torch.no_grad():
            for name, w, b in (("conv", CONV_W, CONV_B), ("fc", FC_W, FC_B)):
                getattr(model, name).weight.copy_(torch.from_numpy(w))
                getattr(model, name).bias.copy_(torch.from_numpy(b))
        return model
    model = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Conv2D(4, 2, name="conv"),
                              keras.layers.ReLU(name="relu"), keras.layers.GlobalAveragePooling2D(name="pool"),
                              keras.layers.Dense(3, name="fc")])
    model.get_layer("conv").set_weights([CONV_W.transpose(TO_KERAS["conv"]), CONV_B])
    model.get_layer("fc").set_weights([FC_W.transpose(TO_KERAS["linear"]), FC_B])
    return model


def masks_in_torch_layout(framework: str, masks: dict) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    out = {}
    for name, entry in masks.items():
        weight = np.asarray(entry["weight"])
        bias = None if entry["bias"] is None else np.asarray(entry["bias"])
        if framework == "keras":
            weight = to_torch("conv" if name == "conv" else "linear", weight)
        out[name] = (weight, bias)
    return out


def forward(framework: str, model, x_nchw: np.ndarray) -> np.ndarray:
    if framework == "torch":
        with torch.no_grad():
            return model(torch.from_numpy(x_nchw)).numpy()
    return np.asarray(model(x_nchw.transpose(0, 2, 3, 1)))


X = np.random.default_rng(0).normal(size=(2, 1, 3, 3)).astype(np.float32)


@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.parametrize("pruner_class", list(EXPECTED), ids=lambda c: c.__name__)
def test_exact_masks(framework, pruner_class):
    pruner = pruner_class(build(framework), [{"sparsity": 0.5, "op_types": ["default"]}])
    pruner.compress()
    masks = masks_in_torch_layout(framework, pruner.get_masks())
    assert sorted(masks) == ["conv", "fc"]
    for name in ("conv", "fc"):
        np.testing.assert_array_equal(masks[name][0], EXPECTED[pruner_class][name])
        if pruner_class in EXPECTED_BIAS:
            np.testing.assert_array_equal(masks[name][1], EXPECTED_BIAS[pruner_class][name])
        else:
            assert masks[name][1] is None


@pytest.mark.parametrize("pruner_class", list(EXPECTED), ids=lambda c: c.__name__)
def test_keras_masks_are_torch_masks_transposed_and_outputs_match(pruner_class):
    results = {}
    for framework in ("torch", "keras"):
        pruner = pruner_class(build(framework), [{"sparsity": 0.5, "op_types": ["default"]}])
        model = pruner.compress()
        results[framework] = (pruner.get_masks(), forward(framework, model, X))
    torch_masks, keras_masks = results["torch"][0], results["keras"][0]
    np.testing.assert_array_equal(np.asarray(keras_masks["conv"]["weight"]),
                                  torch_masks["conv"]["weight"].numpy().transpose(TO_KERAS["conv"]))
    np.testing.assert_array_equal(np.asarray(keras_masks["fc"]["weight"]), torch_masks["fc"]["weight"].numpy().T)
    np.testing.assert_allclose(results["keras"][1], results["torch"][1], rtol=1e-5, atol=1e-6)
    unmasked = forward("keras", build("keras"), X)
    assert not np.allclose(unmasked, results["keras"][1])  # the masks really apply in the returned model


def _seed(module: torch.nn.Module, seed: int) -> np.ndarray:
    weight = np.random.default_rng(seed).normal(size=tuple(module.weight.shape)).astype(np.float32)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight))
    return weight


def plain_case(make_torch, make_keras, channels, kind):
    """One PyTorch layer and its Keras twin (weights: the torch ones in Keras' layout)."""
    def build_pair():
        torch_layer = make_torch()
        keras_layer = make_keras()
        weight = _seed(torch_layer, 1)
        keras_model = keras.Sequential([keras.Input((4, 4, channels)), keras_layer])
        kernel = depthwise_to_keras(weight, keras_layer.depth_multiplier) if kind == "depthwise" else (
            weight.transpose(TO_KERAS[kind]))
        keras_layer.set_weights([kernel, torch_layer.bias.detach().numpy()])
        return torch.nn.Sequential(torch_layer), "0", keras_model, keras_layer.name
    return build_pair


def separable_pair(compared: str = "pointwise"):
    """Keras SeparableConv2D(4, 2, depth_multiplier=2) on 4 channels = PyTorch depthwise (4 -> 8) + 1x1 (8 -> 4).
    The compared weight is the pointwise kernel (entry 'sep', PyTorch module '1') or the depthwise kernel (entry
    'sep/depthwise', PyTorch module '0')."""
    depthwise, pointwise = torch.nn.Conv2d(4, 8, 2, groups=4, bias=False), torch.nn.Conv2d(8, 4, 1)
    dw, pw = _seed(depthwise, 2), _seed(pointwise, 3)
    layer = keras.layers.SeparableConv2D(4, 2, depth_multiplier=2, name="sep")
    keras_model = keras.Sequential([keras.Input((4, 4, 4)), layer])
    layer.set_weights([depthwise_to_keras(dw, 2), pw.transpose(TO_KERAS["conv"]), pointwise.bias.detach().numpy()])
    torch_name, keras_name = {"pointwise": ("1", "sep"), "depthwise": ("0", "sep/depthwise")}[compared]
    return torch.nn.Sequential(depthwise, pointwise), torch_name, keras_model, keras_name


LAYOUT_CASES = {
    # kind: build() -> (torch model, name of its compared layer, keras model, name of the keras layer)
    "deconv": plain_case(lambda: torch.nn.ConvTranspose2d(2, 4, 2), lambda: keras.layers.Conv2DTranspose(4, 2), 2,
                         "deconv"),
    "depthwise": plain_case(lambda: torch.nn.Conv2d(4, 4, 2, groups=4), lambda: keras.layers.DepthwiseConv2D(2), 4,
                            "depthwise"),
    "depthwise_mult2": plain_case(lambda: torch.nn.Conv2d(4, 8, 2, groups=4),
                                  lambda: keras.layers.DepthwiseConv2D(2, depth_multiplier=2), 4, "depthwise"),
    "conv": plain_case(lambda: torch.nn.Conv2d(2, 4, 2), lambda: keras.layers.Conv2D(4, 2), 2, "conv"),
    "separable": separable_pair,
    "separable-depthwise": lambda: separable_pair("depthwise"),
}


def keras_to_torch_layout(keras_mask: np.ndarray, kind: str) -> np.ndarray:
    """The Keras mask in the PyTorch weight's layout."""
    if kind.startswith("depthwise") or kind.endswith("depthwise"):
        kh, kw, c, m = keras_mask.shape
        return keras_mask.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
    return to_torch("deconv" if kind == "deconv" else "conv", keras_mask)


@pytest.mark.parametrize("kind", list(LAYOUT_CASES))
@pytest.mark.parametrize("pruner_class", [L1FilterPruner, L2FilterPruner, FPGMPruner, LevelPruner],
                         ids=lambda c: c.__name__)
def test_layouts_agree_with_torch(kind, pruner_class):
    torch_model, torch_name, keras_model, keras_name = LAYOUT_CASES[kind]()
    torch_names = ["0", "1"] if kind.startswith("separable") else [torch_name]  # the two halves of a separable
    torch_pruner = pruner_class(torch_model, [{"sparsity": 0.5, "op_names": torch_names}])
    keras_pruner = pruner_class(keras_model, [{"sparsity": 0.5, "op_types": ["default"]}])
    torch_pruner.compress()
    keras_pruner.compress()
    # 'default' selects both kernels of a separable conv, each an entry of its own
    assert list(keras_pruner.get_masks()) == (["sep", "sep/depthwise"] if kind.startswith("separable") else
                                              [keras_name])
    torch_mask = torch_pruner.get_masks()[torch_name]["weight"].numpy()
    keras_mask = np.asarray(keras_pruner.get_masks()[keras_name]["weight"])
    np.testing.assert_array_equal(keras_to_torch_layout(keras_mask, kind), torch_mask)
    assert keras_mask.mean() == pytest.approx(0.5)
    torch_bias = torch_pruner.get_masks()[torch_name]["bias"]
    if pruner_class is not LevelPruner and torch_bias is not None:  # whole output channels go, with their bias
        np.testing.assert_array_equal(np.asarray(keras_pruner.get_masks()[keras_name]["bias"]), torch_bias.numpy())
    if kind == "separable-depthwise":  # a separable conv's depthwise kernel has no bias of its own
        assert torch_bias is None and keras_pruner.get_masks()[keras_name]["bias"] is None
    x = np.random.default_rng(4).normal(size=(2, 4, 4, keras_model.inputs[0].shape[-1])).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(keras_model(x)), expected.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
