"""``dependency_aware=True`` on Keras functional models: the channel groups read from the layer graph
are those the PyTorch graph capture finds on the same network, and the pruners give the same masks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import FPGMPruner, L1FilterPruner, L2FilterPruner
from slimkit.compression.channels import channel_rows
from slimkit.compression.sparsity import prune_count
from slimkit.errors import UnsupportedModelError, UnsupportedOpError
from slimkit.frameworks.tensorflow.dependency import channel_groups
from slimkit.speedup.dependency import channel_groups as torch_channel_groups
from tests.frameworks.tensorflow.keras_layouts import depthwise_to_keras

L = keras.layers


class Residual(nn.Module):
    """stem -> conv1 -> bn -> relu -> conv2, summed with stem; a second block summed again; dense head."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.conv3, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(8, 4)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = s + self.conv2(torch.relu(self.bn(self.conv1(s))))
        y = y + self.conv3(y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def keras_residual() -> keras.Model:
    x = keras.Input((6, 6, 3))
    s = L.ReLU()(L.Conv2D(8, 3, padding="same", name="stem")(x))
    y = L.Conv2D(8, 3, padding="same", name="conv2")(
        L.ReLU()(L.BatchNormalization(epsilon=1e-5, name="bn")(L.Conv2D(8, 3, padding="same", name="conv1")(s))))
    y = L.Add()([s, y])
    y = y + L.Conv2D(8, 1, name="conv3")(y)  # keras.ops addition, not a layer
    return keras.Model(x, L.Dense(4, name="fc")(L.GlobalAveragePooling2D()(y)))


class Mobile(nn.Module):
    """conv -> depthwise (x1) -> depthwise (x2) -> pointwise, concatenated with a branch and flattened."""

    def __init__(self):
        super().__init__()
        self.conv, self.dw1 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.dw2, self.pw = nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.Conv2d(8, 6, 1)
        self.branch, self.fc = nn.Conv2d(3, 2, 1), nn.Linear(8 * 36, 4)

    def forward(self, x):
        y = self.pw(self.dw2(torch.relu(self.dw1(self.conv(x)))))
        y = torch.cat([y, self.branch(x)], dim=1)
        return self.fc(torch.flatten(y.permute(0, 2, 3, 1), 1))  # Keras flattens channels-last


def keras_mobile() -> keras.Model:
    x = keras.Input((6, 6, 3))
    y = L.DepthwiseConv2D(3, padding="same", name="dw1")(L.Conv2D(4, 3, padding="same", name="conv")(x))
    y = L.Conv2D(6, 1, name="pw")(L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw2")(L.ReLU()(y)))
    y = L.Concatenate()([y, L.Conv2D(2, 1, name="branch")(x)])
    return keras.Model(x, L.Dense(4, name="fc")(L.Flatten()(y)))


class Grouped(nn.Module):
    """Two convs on the input; a grouped 1x1 conv (2 groups) on the first, summed with the second."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.g, self.fc = nn.Conv2d(4, 4, 1, groups=2), nn.Linear(4, 2)

    def forward(self, x):
        y = self.g(self.a(x)) + self.b(x)
        return self.fc(y.mean(dim=(2, 3)))


def keras_grouped() -> keras.Model:
    x = keras.Input((6, 6, 3))
    y = L.Add()([L.Conv2D(4, 1, groups=2, name="g")(L.Conv2D(4, 3, padding="same", name="a")(x)),
                 L.Conv2D(4, 3, padding="same", name="b")(x)])
    return keras.Model(x, L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(y)))


CASES = {"residual": (Residual, keras_residual), "mobile": (Mobile, keras_mobile), "grouped": (Grouped, keras_grouped)}


def twins(case: str) -> tuple[nn.Module, keras.Model]:
    """The PyTorch model (seeded) and its Keras twin with the same weights in Keras' layout."""
    make_torch, make_keras = CASES[case]
    torch.manual_seed(0)
    net = make_torch().eval()
    model = make_keras()
    for name, module in net.named_children():
        layer = model.get_layer(name)
        if isinstance(module, nn.BatchNorm2d):
            layer.set_weights([t.detach().numpy() for t in (module.weight, module.bias, module.running_mean,
                                                            module.running_var)])
            continue
        weight = module.weight.detach().numpy()
        if isinstance(layer, L.DepthwiseConv2D):
            kernel = depthwise_to_keras(weight, layer.depth_multiplier)
        else:
            kernel = weight.T if weight.ndim == 2 else weight.transpose(2, 3, 1, 0)
        layer.set_weights([kernel, module.bias.detach().numpy()])
    return net, model


EXPECTED_GROUPS = {
    "residual": [(["stem", "conv2", "conv3"], 1)],
    "mobile": [(["conv", "dw1"], 4), (["dw2"], 4)],  # dw2's input: 4 groups of 1; its output: 4 groups of 2
    "grouped": [(["a"], 2), (["b", "g"], 2)],
}


def summary(groups) -> list[tuple[list[str], int]]:
    return sorted((sorted(g.members), g.partitions) for g in groups)


@pytest.mark.parametrize("case", list(CASES))
def test_groups_equal_the_pytorch_capture(case):
    net, model = twins(case)
    torch_groups = torch_channel_groups(net, torch.zeros(1, 3, 6, 6))
    keras_groups = channel_groups(model)
    assert summary(keras_groups) == summary(torch_groups) == sorted((sorted(m), p) for m, p in EXPECTED_GROUPS[case])


def to_keras_layout(model: keras.Model, name: str, mask: np.ndarray) -> np.ndarray:
    if isinstance(model.get_layer(name), L.DepthwiseConv2D):
        return depthwise_to_keras(mask, model.get_layer(name).depth_multiplier)
    if mask.ndim == 1:  # BatchNorm: one entry per channel in both frameworks
        return mask
    return mask.T if mask.ndim == 2 else mask.transpose(2, 3, 1, 0)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pruner_class", [L1FilterPruner, L2FilterPruner, FPGMPruner], ids=lambda c: c.__name__)
def test_dependency_aware_masks_equal_pytorch(case, pruner_class):
    net, model = twins(case)
    x = np.random.default_rng(0).normal(size=(2, 3, 6, 6)).astype(np.float32)
    torch_pruner = pruner_class(net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dependency_aware=True,
                                dummy_input=torch.from_numpy(x))
    keras_pruner = pruner_class(model, [{"sparsity": 0.5, "op_types": ["Conv2D", "DepthwiseConv2D"]}],
                                dependency_aware=True)
    torch_pruner.compress()
    keras_pruner.compress()
    torch_masks, keras_masks = torch_pruner.get_masks(), keras_pruner.get_masks()
    assert sorted(keras_masks) == sorted(torch_masks)
    for name, entry in torch_masks.items():
        expected = to_keras_layout(model, name, entry["weight"].numpy())
        np.testing.assert_array_equal(np.asarray(keras_masks[name]["weight"]), expected, err_msg=name)
        np.testing.assert_array_equal(np.asarray(keras_masks[name]["bias"]), entry["bias"].numpy(), err_msg=name)
    for group in keras_pruner.channel_groups:  # coupled layers keep the same channels
        kept = {tuple(np.asarray(keras_masks[m]["bias"]).tolist()) for m in group.members if m in keras_masks}
        assert len(kept) == 1 or group.partitions > 1, group
    with torch.no_grad():
        expected_out = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model(x.transpose(0, 2, 3, 1))), expected_out, rtol=1e-4, atol=1e-5)


def test_subclassed_model_is_refused_with_what_to_do():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(4, 3, name="conv")

        def call(self, x):
            return self.conv(x)

    model = Net()
    model(np.zeros((1, 6, 6, 3), np.float32))
    with pytest.raises(UnsupportedModelError, match=r"functional API .* dependency_aware=False"):
        L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], dependency_aware=True)


def test_unknown_layer_is_refused_by_name():
    x = keras.Input((6, 6, 3))
    y = L.Conv2D(4, 3, name="conv")(x)
    model = keras.Model(x, L.Lambda(lambda t: t[..., ::-1], name="flip")(y))
    with pytest.raises(UnsupportedOpError, match="'flip' of type Lambda"):
        L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}], dependency_aware=True)


def test_sequential_nested_models_and_grouped_convs():
    seq = keras.Sequential([keras.Input((6, 6, 3)), L.Conv2D(4, 3, name="c"), L.BatchNormalization(),
                            L.DepthwiseConv2D(3, name="dw"), L.Conv2D(2, 1, name="p")])
    assert [(g.members, g.partitions) for g in channel_groups(seq)] == [(["c", "dw"], 1)]
    inner_in = keras.Input((6, 6, 4))
    block = keras.Model(inner_in, L.Conv2D(4, 3, padding="same", name="inner")(inner_in), name="block")
    x = keras.Input((6, 6, 3))
    stem = L.Conv2D(4, 3, padding="same", name="stem")(x)
    nested = keras.Model(x, L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.Add()([stem, block(stem)]))))
    assert [(g.members, g.partitions) for g in channel_groups(nested)] == [(["stem", "block/inner"], 1)]


def test_keras_applications_mobilenet_v2_groups_prune_alike():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None)
    groups = channel_groups(model)
    # the stem and the first depthwise conv; each expansion 1x1 conv and its depthwise conv; the
    # projections summed by a block's residual add
    assert (groups[0].members, groups[1].members) == (["Conv1", "expanded_conv_depthwise"],
                                                      ["block_1_expand", "block_1_depthwise"])
    assert ["block_2_project", "block_1_project"] in [sorted(g.members, reverse=True) for g in groups]
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D", "DepthwiseConv2D"]}],
                            dependency_aware=True)
    pruner.compress()
    masks = pruner.get_masks()
    for group in groups:
        kept = {tuple(channel_rows(np.asarray(masks[m]["weight"]), pruner.layer(m).out_axis).any(axis=1))
                for m in group.members}
        assert len(kept) == 1, group
        [keep] = kept
        assert len(keep) - sum(keep) == prune_count(0.5, len(keep)), group


def test_variable_spatial_size_concat_and_merge():
    x = keras.Input((None, None, 3))
    a, b = L.Conv2D(4, 3, padding="same", name="a")(x), L.Conv2D(2, 3, padding="same", name="b")(x)
    c = L.Conv2D(6, 1, name="c")(x)
    model = keras.Model(x, L.Add()([L.Concatenate()([a, b]), c]))
    assert channel_groups(model) == []  # c is coupled with a and b only in part: no single mask fits
    model = keras.Model(x, L.Concatenate()([L.Add()([a, L.Conv2D(4, 1, name="d")(x)]), b]))
    assert [(g.members, g.partitions) for g in channel_groups(model)] == [(["a", "d"], 1)]
