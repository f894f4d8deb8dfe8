"""Every pruner through the adapter protocol only, on a channels-last toy framework.

A numpy "framework" with Keras's layouts (conv kernels ``(kh, kw, in, out)``, dense ``(in, out)``,
activations ``NHWC``) stands in for Keras: the pruners must give the same answers as on the PyTorch
layout without knowing which framework they run on.
"""

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import PRUNERS, get_pruner
from slimkit.compression import compressor
from slimkit.compression.config import LayerRef


class Variable:
    def __init__(self, value):
        self.value = np.array(value, dtype=np.float32)

    def numpy(self):
        return self.value

    def assign(self, value):
        self.value = np.array(value, dtype=np.float32)


class Layer:
    def __init__(self, kind, weight, bias):
        self.kind = kind
        self.kernel = Variable(weight)
        self.bias = Variable(bias)


class ToyModel:
    """1x1 conv (2 -> 4 channels, NHWC), BatchNorm-like scale, global pool, dense (4 -> 3)."""

    def __init__(self, conv_w, conv_b, gamma, dense_w):
        self.layers = {"conv": Layer("Conv2D", conv_w, conv_b), "bn": Layer("BatchNormalization", gamma, [0.0] * 4),
                       "dense": Layer("Dense", dense_w, [0.0] * 3)}
        self.wrappers = {}

    @property
    def weights(self):
        return [v for layer in self.layers.values() for v in (layer.kernel, layer.bias)]

    def _param(self, name, kind):
        layer, wrapper = self.layers[name], self.wrappers.get(name)
        value = (layer.kernel if kind == "weight" else layer.bias).value
        mask = getattr(wrapper, f"{kind}_mask", None) if wrapper else None
        return value * mask if mask is not None else value

    def _out(self, name, value):
        for hook in list(self.wrappers[name].hooks.values()) if name in self.wrappers else []:
            hook(value)
        return value

    def __call__(self, x):  # x: NHWC
        y = self._out("conv", np.einsum("nhwi,io->nhwo", x, self._param("conv", "weight")[0, 0])
                      + self._param("conv", "bias"))
        y = self._out("bn", y * self._param("bn", "weight") + self._param("bn", "bias"))
        y = np.maximum(y, 0).mean(axis=(1, 2))
        return self._out("dense", y @ self._param("dense", "weight") + self._param("dense", "bias"))


class TorchToy(nn.Module):
    """The same network in PyTorch (eval-mode BatchNorm with eps=0 and unit statistics: y * gamma + beta)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        self.bn = nn.BatchNorm2d(4, eps=0.0)
        self.dense = nn.Linear(4, 3)

    def forward(self, x):
        return self.dense(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class Wrapper:
    def __init__(self):
        self.weight_mask = self.bias_mask = None
        self.hooks = {}


class Handle:
    def __init__(self, hooks, key):
        self.hooks, self.key = hooks, key

    def remove(self):
        self.hooks.pop(self.key, None)


class ChannelsLastAdapter:
    name = "toy"
    roles = {"weighted": ("Conv2D", "Dense"), "batchnorm": ("BatchNormalization",)}

    def discover(self, model):
        return [LayerRef(name, layer.kind, layer) for name, layer in model.layers.items()]

    def known_types(self):
        return {"Conv2D", "Dense", "BatchNormalization"}

    def default_types(self, role):
        return self.roles.get(role, ())

    def has_weight(self, module):
        return True

    def out_axis(self, module):
        return -1

    def activation_axis(self, module):
        return -1

    def weight(self, layer, masked=True):
        mask = layer.wrapper.weight_mask if masked and layer.wrapper else None
        return layer.module.kernel.value * mask if mask is not None else layer.module.kernel.value

    def bias(self, layer, masked=True):
        mask = layer.wrapper.bias_mask if masked and layer.wrapper else None
        return layer.module.bias.value * mask if mask is not None else layer.module.bias.value

    def to_numpy(self, tensor):
        return np.asarray(tensor)

    def wrap(self, model, layers):
        for layer in layers:
            layer.wrapper = model.wrappers[layer.name] = Wrapper()

    def unwrap(self, model, layers):
        for layer in layers:
            model.wrappers.pop(layer.name)
            layer.wrapper = None

    def set_masks(self, layer, weight_mask, bias_mask):
        layer.wrapper.weight_mask = weight_mask.copy()
        if bias_mask is not None:
            layer.wrapper.bias_mask = bias_mask.copy()

    def get_masks(self, layer):
        w = layer.wrapper.weight_mask
        return (w.copy() if w is not None else np.ones_like(layer.module.kernel.value),
                None if layer.wrapper.bias_mask is None else layer.wrapper.bias_mask.copy())

    def installed_weight_mask(self, layer):
        return layer.wrapper.weight_mask

    def state_tensor(self, array):
        return array

    def state_array(self, value):
        return np.asarray(value)

    def add_output_hook(self, layer, fn):
        key = object()
        layer.wrapper.hooks[key] = fn
        return Handle(layer.wrapper.hooks, key)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(compressor, "adapter_for", lambda model: ChannelsLastAdapter())
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(4, 2)).astype(np.float32)  # (out, in) in PyTorch terms
    gamma = np.array([0.3, 1.2, 0.05, 0.8], dtype=np.float32)
    dense = rng.normal(size=(3, 4)).astype(np.float32)
    bias = np.array([0.1, -2.0, 0.3, 0.0], dtype=np.float32)
    keras_like = ToyModel(conv.T[None, None], bias, gamma, dense.T)
    torch_like = TorchToy()
    with torch.no_grad():
        torch_like.conv.weight.copy_(torch.tensor(conv)[:, :, None, None])
        torch_like.conv.bias.copy_(torch.tensor(bias))
        torch_like.bn.weight.copy_(torch.tensor(gamma))
        torch_like.dense.weight.copy_(torch.tensor(dense))
    return keras_like, torch_like


def _configs(name, kinds):
    if name == "agp":
        return [{"final_sparsity": 0.5, "end_epoch": 1, "op_types": kinds}]
    if name == "lottery":
        return [{"sparsity": 0.5, "prune_iterations": 1, "op_types": kinds}]
    return [{"sparsity": 0.5, "op_types": kinds}]


def _drive(pruner, model, x):
    pruner.compress()
    model(x)
    pruner.step()
    if hasattr(pruner, "prune_iteration_start"):
        pruner.prune_iteration_start(), pruner.prune_iteration_start()
    pruner.update_epoch(1)
    return pruner.get_masks()


@pytest.mark.parametrize("name", list(PRUNERS))
def test_channels_last_masks_equal_the_pytorch_ones(toy, name):
    keras_like, torch_like = toy
    cls = get_pruner(name)
    slim = cls.default_op_role == "batchnorm"
    x = np.random.default_rng(1).uniform(size=(2, 3, 3, 2)).astype(np.float32)
    keras_masks = _drive(cls(keras_like, _configs(name, ["BatchNormalization"] if slim else ["Conv2D", "Dense"])),
                         keras_like, x)
    torch_like.eval()
    with monkeypatch_off():
        torch_pruner = cls(torch_like, _configs(name, ["BatchNorm2d"] if slim else ["Conv2d", "Linear"]))
        torch_masks = _drive(torch_pruner, torch_like, torch.tensor(x).permute(0, 3, 1, 2))
    for layer in keras_masks:
        k, t = keras_masks[layer]["weight"], torch_masks[layer]["weight"].numpy()
        if k.ndim == 4:
            k = k[0, 0].T  # (1, 1, in, out) -> (out, in)
            t = t[:, :, 0, 0]
        elif k.ndim == 2:
            k = k.T
        np.testing.assert_array_equal(k, t, err_msg=f"{name} {layer}")
    assert sum(int((m["weight"] == 0).sum()) for m in keras_masks.values()) > 0


class monkeypatch_off:
    """Use the real adapter lookup (PyTorch) inside the block."""

    def __enter__(self):
        from slimkit.compression import adapter

        self.saved = compressor.adapter_for
        compressor.adapter_for = adapter.adapter_for

    def __exit__(self, *exc):
        compressor.adapter_for = self.saved
