"""Keras 3 adapter: layer discovery, mask wrappers, hooks and files for ``keras.Model`` models.

The core reaches it through :func:`slimkit.compression.adapter.adapter_for`, which reads the
module-level ``ADAPTER``. Wrapping keeps the model object and its layer objects: each selected
layer's calls are routed through a :class:`~slimkit.frameworks.tensorflow.wrapper.MaskWrapper`
(see that module), so ``pruner.compress()`` returns the same model, ready to train.

Example:

>>> import keras
>>> from slimkit.frameworks.tensorflow.adapter import ADAPTER
>>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name='conv'),
...                           keras.layers.ReLU(name='relu')])
>>> [(ref.name, ref.type) for ref in ADAPTER.discover(model)]
[('conv', 'Conv2D'), ('relu', 'ReLU')]
>>> ADAPTER.out_axis(model.get_layer('conv'))
-1
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from slimkit.compression.channels import ChannelAxis
from slimkit.compression.composition import stacking_targets
from slimkit.compression.config import LayerRef, class_names
from slimkit.errors import CompressionStateError
from slimkit.frameworks.tensorflow import layout
from slimkit.frameworks.tensorflow.discovery import named_layers
from slimkit.frameworks.tensorflow.wrapper import HookHandle, install, retrace, uninstall, wrapper_of


class KerasAdapter:
    """The :class:`slimkit.compression.adapter.FrameworkAdapter` for Keras 3 models."""

    name = "keras"

    def discover(self, model: Any) -> list[LayerRef]:
        """Every layer, and after a layer holding several kernels an entry per extra kernel (a SeparableConv2D
        ``'sep1'`` is followed by ``'sep1/depthwise'``, of type ``'DepthwiseConv2D'``: see :mod:`.layout`)."""
        return [LayerRef(entry, kind, layer, class_names(type(layer), keras.layers.Layer) if kernel is None
                         else (kind,), kernel, layout.kernel_output(layer, kernel))
                for name, layer in named_layers(model) for entry, kernel, kind in layout.entries(name, layer)]

    def parameter_refs(self, model: Any, names: list[str], axes: dict[str, int]) -> list[LayerRef]:
        """No free parameters: every Keras weight a follower masks belongs to a layer."""
        return []

    @functools.cache  # noqa: B019 - the adapter is a process-wide singleton
    def known_types(self) -> set[str]:
        return {name for name, obj in vars(keras.layers).items()
                if isinstance(obj, type) and issubclass(obj, keras.layers.Layer)}

    def default_types(self, role: str) -> tuple[str, ...]:
        return layout.ROLES.get(role, ())

    def has_weight(self, module: Any) -> bool:
        if not module.built:
            raise CompressionStateError(
                f"Layer {module.name!r} is not built yet, so it has no weights to compress. Expected a built "
                f"model: call the model on an example batch (or give it a keras.Input) before compressing.")
        return layout.variable(module, layout.weight_attrs(module)[0]) is not None

    def out_axis(self, module: Any, kernel: str | None = None) -> ChannelAxis:
        return layout.out_axis(module, kernel)

    def activation_axis(self, module: Any) -> int:
        """Channel axis of the layer's output: -1 (channels_last), or 1 for ``data_format='channels_first'``."""
        return layout.activation_axis(module)

    def channel_groups(self, model: Any, dummy_input: Any) -> list[Any]:
        """Layers whose output channels are coupled, read from the functional graph (``dummy_input`` unused)."""
        return self.channel_dependencies(model, dummy_input)[0]

    def channel_dependencies(self, model: Any, dummy_input: Any) -> tuple[list[Any], Any]:
        """:meth:`channel_groups` and the BatchNormalization layers following output channels."""
        from slimkit.frameworks.tensorflow.dependency import channel_dependencies

        return channel_dependencies(model)

    def weight(self, layer: Any, masked: bool = True) -> tf.Tensor:
        return self._param(layer, 0, masked)

    def bias(self, layer: Any, masked: bool = True) -> tf.Tensor | None:
        return self._param(layer, 1, masked)

    def _param(self, layer: Any, index: int, masked: bool) -> tf.Tensor | None:
        var = layout.variable(layer.module, layout.weight_attrs(layer.module, layer.kernel)[index])
        if var is None:
            return None
        value = tf.convert_to_tensor(var.value)
        wrapper = wrapper_of(layer.module)
        mask = None
        if masked and wrapper is not None:
            mask = wrapper.mask_of(layer.kernel) if index == 0 else wrapper.bias_mask
        return value * tf.cast(mask, value.dtype) if mask is not None else value

    def to_numpy(self, tensor: Any) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(tensor))

    def state_tensor(self, array: np.ndarray) -> np.ndarray:
        """A checkpoint array stays a numpy array (a copy, dtype kept)."""
        return array

    def state_array(self, value: Any) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(value))

    def wrap(self, model: Any, layers: list[Any]) -> None:
        stacking_targets(layers, lambda layer: wrapper_of(layer.module))  # a pruner stacks on nothing
        for layer in layers:  # one wrapper per Keras layer, holding the masks of all its entries
            layer.wrapper = wrapper_of(layer.module) or install(layer.module,
                                                                layout.layer_name(layer.name, layer.kernel))
            layer.wrapper.attached.append(layer)
            layer.wrapper.models.add(model)
        retrace(model)

    def unwrap(self, model: Any, layers: list[Any]) -> None:
        for module in modules_of(layers):
            uninstall(module)
        for layer in layers:
            layer.wrapper = None
        retrace(model)

    def set_masks(self, layer: Any, weight_mask: np.ndarray, bias_mask: np.ndarray | None) -> None:
        wrapper = layer.wrapper
        wrapper.mask_of(layer.kernel).assign(np.asarray(weight_mask, dtype=np.float32))
        if layer.kernel is not None:
            wrapper.mask_set(layer.kernel)
        if bias_mask is not None and wrapper.bias_mask is not None:
            wrapper.bias_mask.assign(np.asarray(bias_mask, dtype=np.float32))
            if not wrapper.bias_mask_set:
                wrapper.bias_mask_set = True
                wrapper.refresh_models()  # functions traced before multiply no bias mask

    def get_masks(self, layer: Any) -> tuple[tf.Tensor, tf.Tensor | None]:
        wrapper = layer.wrapper
        bias = tf.identity(wrapper.bias_mask.value) if wrapper.bias_mask_set and layer.kernel is None else None
        return tf.identity(wrapper.mask_of(layer.kernel).value), bias

    def installed_weight_mask(self, layer: Any) -> Any:
        """The wrapper's weight mask variable of ``layer``'s entry (ones until a mask is set)."""
        return layer.wrapper.mask_of(layer.kernel)

    def add_output_hook(self, layer: Any, fn: Callable[[np.ndarray], None]) -> HookHandle:
        """Call ``fn(output as numpy)`` after every forward of ``layer``, eager or inside ``fit``."""
        return layer.wrapper.add_hook(fn)

    def save_weights(self, model: Any, layers: list[Any], path: str) -> None:
        from slimkit.frameworks.tensorflow.export import save_model

        save_model(model, path)

    def save_masks(self, masks: dict[str, dict[str, Any]], path: str) -> None:
        from slimkit.frameworks.tensorflow.export import save_masks

        save_masks(masks, path)

    @property
    def quant_backend(self) -> Any:
        """Quantization support (ops seam, fake-quant wrappers, files): ``quant_backend.KerasQuantBackend``."""
        from slimkit.frameworks.tensorflow.quant_backend import BACKEND

        return BACKEND

    def export_onnx(self, model: Any, layers: list[Any], path: str, example: Any, device: Any) -> None:
        from slimkit.errors import UnsupportedOpError

        raise UnsupportedOpError("ONNX export of Keras models is not supported. Expected onnx_path=None; export "
                                 "with slimkit.frameworks.tensorflow.export_tflite(model, path) instead. "
                                 f"Received: onnx_path={path!r}")


def modules_of(layers: list[Any]) -> list[Any]:
    """The Keras layers behind ``layers`` (compressor entries), each once: a layer's entries share its wrapper."""
    return list({id(layer.module): layer.module for layer in layers}.values())


ADAPTER = KerasAdapter()
