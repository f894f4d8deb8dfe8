"""Compressor lifecycle shared by every algorithm, and the :class:`Pruner` base.

A compressor selects layers with a config_list (validated at construction, before any layer
is touched), wraps them on :meth:`Compressor.compress`, and lets the algorithm decide masks
through :meth:`Pruner.calc_mask`. It imports no framework: the model's adapter does the work.

Example (a custom pruner overriding only ``calc_mask``):

>>> import numpy as np, torch
>>> from slimkit.compression import Pruner
>>> class HalfRowsPruner(Pruner):
...     def calc_mask(self, layer, config, **kwargs):
...         mask = np.ones(tuple(layer.weight.shape), dtype=np.float32)
...         mask[: mask.shape[0] // 2] = 0
...         return mask
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4))
>>> pruner = HalfRowsPruner(model, [{'sparsity': 0.5, 'op_types': ['Linear']}])
>>> model = pruner.compress()
>>> pruner.get_masks()['0']['weight'][:, 0].tolist()
[0.0, 0.0, 1.0, 1.0]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from slimkit.compression.adapter import FrameworkAdapter, adapter_for
from slimkit.compression.channels import ChannelAxis
from slimkit.compression.config import (
    FRACTION,
    ConfigKey,
    LayerConfig,
    LayerRef,
    match_layers,
    parse_config_list,
)
from slimkit.errors import CompressionStateError, ConfigError, SlimkitError
from slimkit.utils import distributed


class Layer:
    """A layer selected for compression, as an algorithm sees it.

    Attributes:
        name: qualified layer name (``'features.3.conv'``; Keras layer name).
        type: the layer's class name (``'Conv2d'``, ``'Dense'``).
        module: the framework's layer object.
        config: the parsed config dict that selected this layer.
    """

    def __init__(self, ref: LayerRef, config: LayerConfig, adapter: FrameworkAdapter):
        self.name = ref.name
        self.type = ref.type
        self.module = ref.module
        self.config = config
        self.wrapper: Any = None  # set by the adapter while the layer is wrapped
        self._adapter = adapter

    @property
    def weight(self) -> Any:
        """The weight as a native tensor, current masks applied, detached from autograd."""
        return self._adapter.weight(self, masked=True)

    @property
    def bias(self) -> Any:
        """The bias as a native tensor (masked, detached), or None."""
        return self._adapter.bias(self, masked=True)

    @property
    def out_axis(self) -> ChannelAxis:
        """Axis of the weight that indexes output channels (0 for torch Conv2d, -1 for Keras Conv2D), or
        axes read as one (``(-2, -1)``: a Keras DepthwiseConv2D with depth_multiplier > 1; see
        :mod:`slimkit.compression.channels`)."""
        return self._adapter.out_axis(self.module)

    def weight_array(self) -> np.ndarray:
        """The masked weight as a numpy array in the framework's native layout."""
        return self._adapter.to_numpy(self.weight)

    def __repr__(self) -> str:
        return f"Layer(name={self.name!r}, type={self.type!r})"


class Compressor:
    """Select layers, wrap them, and restore them. Base of :class:`Pruner` and ``Quantizer``.

    Subclasses declare ``config_keys`` (algorithm keys of a config dict, beside ``op_types``,
    ``op_names`` and ``exclude``) and ``default_op_role`` (what ``'default'`` in ``op_types``
    expands to: ``'weighted'`` conv/linear layers, ``'batchnorm'``, ``'quantizable'``).
    """

    config_keys: ClassVar[Mapping[str, ConfigKey]] = {}
    default_op_role: ClassVar[str] = "weighted"

    def __init__(self, model: Any, config_list: list[dict]):
        self.adapter: FrameworkAdapter = adapter_for(model)
        algorithm = type(self).__name__
        configs = parse_config_list(config_list, self.config_keys, algorithm)
        matches = match_layers(configs, self.adapter.discover(model), algorithm=algorithm,
                               default_types=self.adapter.default_types(self.default_op_role),
                               known_types=self.adapter.known_types())
        self.model = model
        self.config_list = config_list
        self.layers = [Layer(ref, cfg, self.adapter) for ref, cfg in matches]
        for layer in self.layers:
            self.validate_layer(layer)
        self.wrapped = False

    def validate_layer(self, layer: Layer) -> None:
        """Raise :class:`ConfigError` if the algorithm cannot compress ``layer``. Default: accept."""

    def compress(self) -> Any:
        """Wrap the selected layers; returns the (same) model."""
        if not self.wrapped:
            self.adapter.wrap(self.model, self.layers)
            self.wrapped = True
        return self.model

    def unwrap_model(self) -> Any:
        """Put the original layer objects back (the exact inverse of wrapping); returns the model."""
        if self.wrapped:
            self.adapter.unwrap(self.model, self.layers)
            self.wrapped = False
        return self.model

    def update_epoch(self, epoch: int) -> None:
        """Per-epoch hook; schedule-driven algorithms override it. Harmless elsewhere."""

    def step(self) -> None:
        """Per-batch hook, called after ``optimizer.step()``. Harmless where not needed."""

    def layer(self, name: str) -> Layer:
        """The selected layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"Expected one of the compressed layers {[layer.name for layer in self.layers]}. "
                       f"Received: name={name!r}")

    def _require_wrapped(self, method: str) -> None:
        if not self.wrapped:
            raise CompressionStateError(f"{type(self).__name__}.{method}() needs the model compressed first: "
                                        f"call compress() before {method}().")


def onnx_example(compressor: Any, onnx_path: Any, dummy_input: Any, input_shape: Any) -> Any:
    """What ``export_model`` traces for ``onnx_path``: ``dummy_input``, else the example the compressor was built
    with (its ``dummy_input``), else ``input_shape`` (a float input of that shape); None without ``onnx_path``."""
    if onnx_path is None:
        return None
    for example in (dummy_input, getattr(compressor, "dummy_input", None), input_shape):
        if example is not None:
            return example
    raise ConfigError("export_model: onnx_path needs an example input. Expected dummy_input= (a tensor or a tuple "
                      "of tensors, e.g. int64 token ids) or input_shape such as [1, 1, 28, 28] for a float input. "
                      "Received: dummy_input=None, input_shape=None")


def _as_array(adapter: FrameworkAdapter, value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else adapter.to_numpy(value)


class Pruner(Compressor):
    """Base of every pruner: masks applied on every forward, computed by :meth:`calc_mask`.

    A subclass overrides :meth:`calc_mask` (and, where its schedule needs it,
    :meth:`update_epoch` / :meth:`step`). ``compress()`` wraps the layers and computes the
    first masks from the current weights.
    """

    config_keys: ClassVar[Mapping[str, ConfigKey]] = {"sparsity": ConfigKey(FRACTION, "a number in [0, 1)")}

    def validate_layer(self, layer: Layer) -> None:
        if not self.adapter.has_weight(layer.module):
            raise ConfigError(f"{type(self).__name__}: config_list[{layer.config.index}] selects layer "
                              f"{layer.name!r} of type {layer.type}, which has no weight to prune. Expected "
                              f"layers with a weight; exclude it or narrow 'op_types'.")

    def compress(self) -> Any:
        super().compress()
        self.update_masks()
        return self.model

    def update_masks(self) -> None:
        """Recompute every layer's mask with :meth:`calc_mask` and install it."""
        self._require_wrapped("update_masks")
        for layer in self.layers:
            self.set_mask(layer, self.calc_mask(layer, layer.config))
        distributed.sync_masks(self)  # every rank installs rank 0's masks (no-op without a process group)

    def calc_mask(self, layer: Layer, config: LayerConfig, **kwargs: Any) -> Any:
        """Return ``layer``'s mask: a weight-shaped 0/1 array or native tensor, or
        ``{'weight': mask, 'bias': mask_or_None}``. Subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement calc_mask(layer, config).")

    def set_mask(self, layer: Layer, mask: Any) -> None:
        """Install ``mask`` (as returned by :meth:`calc_mask`) on ``layer``'s wrapper."""
        if isinstance(mask, Mapping):
            weight_mask, bias_mask = mask.get("weight"), mask.get("bias")
        else:
            weight_mask, bias_mask = mask, None
        weight_mask = self._checked(layer, "weight", weight_mask)
        if bias_mask is not None:
            bias_mask = self._checked(layer, "bias", bias_mask)
        self.adapter.set_masks(layer, weight_mask, bias_mask)

    def _checked(self, layer: Layer, kind: str, mask: Any) -> np.ndarray:
        # only the shape is needed: read the raw parameter instead of building a masked copy per layer
        read = self.adapter.weight if kind == "weight" else self.adapter.bias
        target = read(layer, masked=False)
        if mask is None or target is None:
            raise SlimkitError(f"{type(self).__name__}: layer {layer.name!r} has no {kind} mask target. "
                               f"Received: {kind} mask={mask!r}")
        array = _as_array(self.adapter, mask).astype(np.float32, copy=False)
        expected = tuple(target.shape)
        if array.shape != expected:
            raise SlimkitError(f"{type(self).__name__}: the {kind} mask of layer {layer.name!r} has the wrong "
                               f"shape. Expected {expected}. Received: shape={array.shape}")
        if not ((array == 0) | (array == 1)).all():
            raise SlimkitError(f"{type(self).__name__}: the {kind} mask of layer {layer.name!r} must hold only "
                               f"0 and 1. Received: values {np.unique(array)[:5].tolist()}")
        return array

    def get_masks(self) -> dict[str, dict[str, Any]]:
        """``{layer_name: {'weight': mask, 'bias': mask or None}}`` as native tensors."""
        self._require_wrapped("get_masks")
        masks = {}
        for layer in self.layers:
            weight_mask, bias_mask = self.adapter.get_masks(layer)
            masks[layer.name] = {"weight": weight_mask, "bias": bias_mask}
        return masks

    def load_masks(self, masks: Mapping[str, Mapping[str, Any]] | str | os.PathLike) -> None:
        """Install masks from a dict like :meth:`get_masks` returns, or from a mask file."""
        if isinstance(masks, (str, os.PathLike)):
            from slimkit.masks import load_masks
            masks = load_masks(masks)
        self.compress()
        for name, entry in masks.items():
            self.set_mask(self.layer(name), {"weight": entry["weight"], "bias": entry.get("bias")})

    def export_model(self, model_path: str | os.PathLike, mask_path: str | os.PathLike | None = None,
                     onnx_path: str | os.PathLike | None = None, input_shape: Any = None,
                     device: Any = None, dummy_input: Any = None) -> None:
        """Write the weights with masks baked in (loadable into the original model class), the
        masks (``mask_path``) and an ONNX file (``onnx_path``, traced on ``dummy_input``, else the
        compressor's own ``dummy_input``, else a float input of ``input_shape``).

        Every file is written to a temporary name and renamed. The compressed model is left as is.
        """
        self._require_wrapped("export_model")
        example = onnx_example(self, onnx_path, dummy_input, input_shape)
        if not distributed.is_main_process():  # under torch.distributed only rank 0 writes
            return
        self.adapter.save_weights(self.model, self.layers, os.fspath(model_path))
        if mask_path is not None:
            self.adapter.save_masks(self.get_masks(), os.fspath(mask_path))
        if onnx_path is not None:
            self.adapter.export_onnx(self.model, self.layers, os.fspath(onnx_path), example, device)
