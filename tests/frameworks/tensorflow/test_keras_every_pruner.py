"""Every registered pruner gives the same masks on a PyTorch model and on its Keras twin.

The twin has the same weights transposed to Keras' layout; activation-based pruners see the same
inputs (NCHW vs NHWC). Masks must be the transposed PyTorch masks, channel for channel.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch

from slimkit.algorithms.pruning import PRUNERS
from tests.algorithms.pruning.pruning_helpers import SmallNet, drive_to_sparsity
from tests.frameworks.tensorflow.keras_layouts import depthwise_to_keras

SPARSITY = 0.5
BATCHES = [np.random.default_rng(i).normal(size=(4, 3, 6, 6)).astype(np.float32) for i in range(2)]
TORCH_TYPES = {"weighted": ["Conv2d", "Linear"], "batchnorm": ["BatchNorm2d"]}
KERAS_TYPES = {"weighted": ["Conv2D", "DepthwiseConv2D", "Dense"], "batchnorm": ["BatchNormalization"]}


class DepthwiseNet(SmallNet):
    """SmallNet with conv2 a depthwise conv with multiplier 2 (8 -> 16 channels, groups=8)."""

    def __init__(self):
        super().__init__()
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1, groups=8)


NETS = {"small": SmallNet, "depthwise_mult2": DepthwiseNet}


def torch_net(kind: str = "small") -> SmallNet:
    torch.manual_seed(0)
    net = NETS[kind]().eval()
    with torch.no_grad():  # distinct BN scales so Slim has no ties
        net.bn1.weight.copy_(torch.linspace(0.1, 1.0, 8)[torch.randperm(8)])
        net.bn2.weight.copy_(torch.linspace(0.05, 1.5, 16)[torch.randperm(16)])
    return net


def keras_twin(net: SmallNet) -> keras.Model:
    depthwise = net.conv2.groups > 1
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(epsilon=1e-5, name="bn1")(x))
    x = (keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="conv2") if depthwise else
         keras.layers.Conv2D(16, 3, padding="same", name="conv2"))(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(epsilon=1e-5, name="bn2")(x))
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(keras.layers.GlobalAveragePooling2D()(x)))
    for name in ("conv1", "conv2"):
        conv = getattr(net, name)
        weight = conv.weight.detach().numpy()
        kernel = depthwise_to_keras(weight, 2) if conv.groups > 1 else weight.transpose(2, 3, 1, 0)
        model.get_layer(name).set_weights([kernel, conv.bias.detach().numpy()])
    for name in ("bn1", "bn2"):
        bn = getattr(net, name)
        model.get_layer(name).set_weights([t.detach().numpy() for t in (
            bn.weight, bn.bias, bn.running_mean, bn.running_var)])
    model.get_layer("fc").set_weights([net.fc.weight.detach().numpy().T, net.fc.bias.detach().numpy()])
    return model


def run(name: str, framework: str, model):
    """Compress ``model`` with the pruner registered as ``name`` and drive it to SPARSITY."""
    cls = PRUNERS[name]
    op_types = (TORCH_TYPES if framework == "torch" else KERAS_TYPES)[cls.default_op_role]

    def feed(pruner):
        for batch in BATCHES:
            if framework == "torch":
                with torch.no_grad():
                    model(torch.from_numpy(batch))
            else:
                model(batch.transpose(0, 2, 3, 1), training=False)
            pruner.step()

    return drive_to_sparsity(cls, model, op_types, SPARSITY, feed)


def to_keras_layout(module: torch.nn.Module, array: np.ndarray) -> np.ndarray:
    if getattr(module, "groups", 1) > 1:
        return depthwise_to_keras(array, module.out_channels // module.in_channels)
    return {4: lambda a: a.transpose(2, 3, 1, 0), 2: lambda a: a.T, 1: lambda a: a}[array.ndim](array)


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("name", list(PRUNERS))
def test_keras_masks_equal_transposed_torch_masks(name, kind):
    net = torch_net(kind)
    model = keras_twin(net)
    torch_pruner = run(name, "torch", net)
    keras_pruner = run(name, "keras", model)
    torch_masks, keras_masks = torch_pruner.get_masks(), keras_pruner.get_masks()
    assert sorted(keras_masks) == sorted(torch_masks)
    for layer, entry in torch_masks.items():
        expected = to_keras_layout(torch_pruner.layer(layer).module, entry["weight"].numpy())
        np.testing.assert_array_equal(np.asarray(keras_masks[layer]["weight"]), expected, err_msg=layer)
        if entry["bias"] is None:
            assert keras_masks[layer]["bias"] is None
        else:
            np.testing.assert_array_equal(np.asarray(keras_masks[layer]["bias"]), entry["bias"].numpy())
    assert any((np.asarray(m["weight"]) == 0).any() for m in keras_masks.values())
    x = BATCHES[0]
    with torch.no_grad():
        torch_out = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model(x.transpose(0, 2, 3, 1))), torch_out, rtol=1e-4, atol=1e-5)
