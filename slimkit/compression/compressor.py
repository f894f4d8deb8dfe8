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

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from slimkit.compression.adapter import FrameworkAdapter, adapter_for
from slimkit.compression.channels import ChannelAxis
from slimkit.compression.composition import PRUNER, check_unwrap
from slimkit.compression.config import (
    FRACTION,
    ConfigKey,
    LayerConfig,
    LayerRef,
    match_layers,
    parse_config_list,
)
from slimkit.compression.finite import check_finite
from slimkit.compression.state import decode, encode
from slimkit.errors import CompressionStateError, ConfigError, MaskError, SlimkitError
from slimkit.utils import distributed
from slimkit.utils.files import write_all
from slimkit.utils.optional import require


class Layer:
    """A layer selected for compression, as an algorithm sees it.

    Attributes:
        name: qualified layer name (``'features.3.conv'``; Keras layer name).
        type: the layer's class name (``'Conv2d'``, ``'Dense'``).
        module: the framework's layer object.
        config: the parsed config dict that selected this layer.
        owner: the compressor that selected it.
        kernel: which weight of ``module`` this entry compresses when the layer holds several (``LayerRef.kernel``:
            a Keras SeparableConv2D's ``'depthwise_kernel'``), or None for its own weight and bias.
        kernel_output: whether that kernel computes a tensor of its own inside the layer (``LayerRef.kernel_output``).
    """

    def __init__(self, ref: LayerRef, config: LayerConfig, adapter: FrameworkAdapter):
        self.name = ref.name
        self.type = ref.type
        self.module = ref.module
        self.kernel = ref.kernel
        self.kernel_output = ref.kernel_output
        self.config = config
        self.wrapper: Any = None  # set by the adapter while the layer is wrapped
        self.owner: Any = None    # set by the compressor (slimkit.compression.composition reads it)
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
        if self.kernel is None:  # adapters written before multi-kernel layers take the module only
            return self._adapter.out_axis(self.module)
        return self._adapter.out_axis(self.module, self.kernel)

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
    weight_use: ClassVar[str] = "compresses it"  # how errors about a layer's weight say what the algorithm does

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
            layer.owner = self
            self.validate_layer(layer)
        self.wrapped = False

    def validate_layer(self, layer: Layer) -> None:
        """Raise :class:`ConfigError` if the algorithm cannot compress ``layer``. Default: accept."""

    def check_weights(self, layers: list[Layer]) -> None:
        """Raise :class:`~slimkit.errors.NonFiniteError` naming the first of ``layers`` whose weight holds NaN or
        infinity, before anything is computed from them (layers without a weight pass)."""
        for layer in layers:
            weight = self.adapter.weight(layer, masked=False)
            if weight is not None:
                check_finite(self.adapter.to_numpy(weight),
                             where=f"the weight of layer {layer.name!r} ({type(self).__name__} {self.weight_use})")

    def compress(self) -> Any:
        """Wrap the selected layers; returns the (same) model."""
        if not self.wrapped:
            self.adapter.wrap(self.model, self.layers)
            self.wrapped = True
        return self.model

    @contextlib.contextmanager
    def wrapping(self) -> Iterator[None]:
        """For a ``compress()`` that wraps and then computes: if the block raises (NaN weights, a failing
        trainer), the layers this block wrapped are unwrapped again, so the model is left as it was."""
        was_wrapped = self.wrapped
        try:
            yield
        except BaseException:
            if not was_wrapped and self.wrapped:
                self.unwrap_model()
            raise

    def unwrap_model(self) -> Any:
        """Put the original layer objects back (the exact inverse of wrapping); returns the model.

        Raises:
            CompositionError: a quantizer is stacked on these layers (unwrap it first).
        """
        if self.wrapped:
            check_unwrap(self, self.layers)
            self.adapter.unwrap(self.model, self.layers)
            self.wrapped = False
        return self.model

    def update_epoch(self, epoch: int) -> None:
        """Per-epoch hook; schedule-driven algorithms override it. Harmless elsewhere."""

    def step(self) -> None:
        """Per-batch hook, called after ``optimizer.step()``. Harmless where not needed."""

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this compressor bit for bit (masks, schedule position, step counters,
        observer statistics, calibration), as nested dicts of plain values and native tensors (PyTorch: loadable
        with ``torch.load(path, weights_only=True)``). Save it beside ``model.state_dict()``; in a fresh process
        build the model and the compressor the same way, ``compress()``, and load both.

        Example:

        >>> import torch
        >>> from slimkit.algorithms.pruning import LevelPruner
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> pruner = LevelPruner(model, [{'sparsity': 0.5, 'op_types': ['Linear']}])
        >>> model = pruner.compress()
        >>> state = pruner.state_dict()
        >>> state['algorithm'], int(state['masks']['0']['weight'].sum())
        ('LevelPruner', 8)
        >>> fresh = LevelPruner(torch.nn.Sequential(torch.nn.Linear(4, 4)), [{'sparsity': 0.5, 'op_types': ['Linear']}])
        >>> _ = fresh.compress(); fresh.load_state_dict(state)
        >>> torch.equal(fresh.get_masks()['0']['weight'], pruner.get_masks()['0']['weight'])
        True
        """
        state = {"algorithm": type(self).__name__, "layers": [layer.name for layer in self.layers],
                 "wrapped": self.wrapped, **self.collect_state()}
        return encode(state, self.adapter.state_tensor)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Everything is checked first (algorithm, layer names, shapes); on an
        error nothing has changed. A state saved while compressed compresses this compressor first.

        Raises:
            CompressionStateError: the state belongs to another algorithm or other layers, or does not fit them.
        """
        if not isinstance(state, Mapping) or "algorithm" not in state or "layers" not in state:
            raise CompressionStateError(f"{type(self).__name__}.load_state_dict: Expected a dict returned by "
                                        f"state_dict(). Received: {type(state).__name__}")
        state = decode(dict(state), self.adapter.state_array)
        names = [layer.name for layer in self.layers]
        if state["algorithm"] != type(self).__name__ or list(state["layers"]) != names:
            raise CompressionStateError(
                f"{type(self).__name__}.load_state_dict: the state was saved by {state['algorithm']} on layers "
                f"{list(state['layers'])}. Expected {type(self).__name__} on layers {names}: build the compressor "
                "with the same model and config_list as the one saved.")
        self.check_state(state)
        if state.get("wrapped") and not self.wrapped:
            self.compress()
        self.restore_state(state)

    def collect_state(self) -> dict[str, Any]:
        """The algorithm's part of :meth:`state_dict`: numpy arrays and plain values. Subclasses extend it."""
        return {}

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Raise :class:`CompressionStateError` if ``state`` (decoded to numpy) cannot be restored. Default: accept."""

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`collect_state` gathered (after :meth:`check_state` passed). Subclasses extend it."""

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
    """What ``export_model`` traces for ``onnx_path``: ``dummy_input`` (a tensor or a tuple of tensors, any dtype),
    else ``input_shape`` (positive ints: a float input of that shape), else the example the compressor was built
    with (its ``dummy_input``); None without ``onnx_path``.

    Raises:
        ConfigError: ``onnx_path`` without any example, or a malformed ``input_shape``.
    """
    if onnx_path is None:
        return None
    if dummy_input is not None:
        return dummy_input
    if input_shape is not None:
        sizes_ok = isinstance(input_shape, (list, tuple)) and input_shape and all(
            isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0 for size in input_shape)
        if not sizes_ok:
            raise ConfigError(f"export_model: Expected input_shape to be a non-empty list of positive ints such as "
                              f"[1, 1, 28, 28]. Received: input_shape={input_shape!r}")
        return [int(size) for size in input_shape]
    example = getattr(compressor, "dummy_input", None)
    if example is None:
        raise ConfigError("export_model: onnx_path needs an example input. Expected dummy_input= (a tensor or a tuple "
                          "of tensors, e.g. int64 token ids) or input_shape such as [1, 1, 28, 28] for a float input, "
                          "or dummy_input given to the compressor. Received: dummy_input=None, input_shape=None")
    return example


def _as_array(adapter: FrameworkAdapter, value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else adapter.to_numpy(value)


class Pruner(Compressor):
    """Base of every pruner: masks applied on every forward, computed by :meth:`calc_mask`.

    A subclass overrides :meth:`calc_mask` (and, where its schedule needs it,
    :meth:`update_epoch` / :meth:`step`). ``compress()`` wraps the layers and computes the
    first masks from the current weights.

    ``optimizer`` is taken in NNI's position (``Pruner(model, config_list, optimizer)``) so that NNI
    scripts run unchanged; masks apply on every forward, so pruners that do not train need none.
    """

    weight_use: ClassVar[str] = "computes its mask from it"
    stack_role: ClassVar[str] = PRUNER  # a quantizer may stack on its layers (slimkit.compression.composition)
    config_keys: ClassVar[Mapping[str, ConfigKey]] = {"sparsity": ConfigKey(FRACTION, "a number in [0, 1)")}

    def __init__(self, model: Any, config_list: list[dict], optimizer: Any = None):
        super().__init__(model, config_list)
        self.optimizer = optimizer

    def validate_layer(self, layer: Layer) -> None:
        if not self.adapter.has_weight(layer.module):
            raise ConfigError(f"{type(self).__name__}: config_list[{layer.config.index}] selects layer "
                              f"{layer.name!r} of type {layer.type}, which has no weight to prune. Expected "
                              f"layers with a weight; exclude it or narrow 'op_types'.")

    def compress(self) -> Any:
        with self.wrapping():
            super().compress()
            self.update_masks()
        return self.model

    def update_masks(self) -> None:
        """Recompute every layer's mask with :meth:`calc_mask` and install it."""
        self._require_wrapped("update_masks")
        self.check_weights(self.layers)
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
        from slimkit.masks import check_mask

        # only the shape is needed: read the raw parameter instead of building a masked copy per layer
        target = (self.adapter.weight if kind == "weight" else self.adapter.bias)(layer, masked=False)
        where = f"{type(self).__name__}: the {kind} mask of layer {layer.name!r}"
        if target is None:
            raise MaskError(f"{where} has nothing to mask: the layer has no {kind}.")
        check_mask(mask, where, tuple(target.shape))
        return _as_array(self.adapter, mask).astype(np.float32, copy=False)

    def _parameter_shapes(self) -> dict[str, dict[str, tuple[int, ...] | None]]:
        shapes = {}
        for layer in self.layers:
            weight, bias = self.adapter.weight(layer, masked=False), self.adapter.bias(layer, masked=False)
            shapes[layer.name] = {"weight": tuple(weight.shape), "bias": None if bias is None else tuple(bias.shape)}
        return shapes

    def collect_state(self) -> dict[str, Any]:
        state = super().collect_state()
        if self.wrapped:
            state["masks"] = {name: {kind: None if mask is None else _as_array(self.adapter, mask)
                                     for kind, mask in entry.items()} for name, entry in self.get_masks().items()}
        return state

    def check_state(self, state: Mapping[str, Any]) -> None:
        super().check_state(state)
        self._checked_masks(state.get("masks") or {})

    def _checked_masks(self, masks: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        checked = {}
        for name, entry in masks.items():
            try:
                layer = self.layer(name)
                checked[name] = (self._checked(layer, "weight", entry["weight"]),
                                 None if entry.get("bias") is None else self._checked(layer, "bias", entry["bias"]))
            except (KeyError, TypeError, SlimkitError) as error:
                raise CompressionStateError(f"{type(self).__name__}.load_state_dict: the saved masks of layer "
                                            f"{name!r} do not fit this model ({error}). Expected the state of the "
                                            "same model and config_list.") from None
        return checked

    def restore_state(self, state: Mapping[str, Any]) -> None:
        super().restore_state(state)
        for name, (weight_mask, bias_mask) in self._checked_masks(state.get("masks") or {}).items():
            self.adapter.set_masks(self.layer(name), weight_mask, bias_mask)

    def get_masks(self) -> dict[str, dict[str, Any]]:
        """``{layer_name: {'weight': mask, 'bias': mask or None}}`` as native tensors."""
        self._require_wrapped("get_masks")
        masks = {}
        for layer in self.layers:
            weight_mask, bias_mask = self.adapter.get_masks(layer)
            masks[layer.name] = {"weight": weight_mask, "bias": bias_mask}
        return masks

    def load_masks(self, masks: Mapping[str, Mapping[str, Any]] | str | os.PathLike) -> None:
        """Install masks from a dict like :meth:`get_masks` returns, or from a mask file.

        Every mask is checked against the compressed layers before anything is wrapped or changed.

        Raises:
            MaskError: a layer this pruner does not compress, a key other than 'weight' / 'bias', or a mask that
                is not a 0/1 tensor of a real dtype and of its parameter's shape (the model is left as it was).
            FileFormatError: ``masks`` is the path of a damaged or foreign file.
        """
        from slimkit.masks import check_masks, load_masks

        source = "masks"
        if isinstance(masks, (str, os.PathLike)):
            source, masks = os.fspath(masks), load_masks(masks)
        name = type(self).__name__
        masks = check_masks(masks, self._parameter_shapes(), source=f"{name}.load_masks: {source}",
                            layers=f"one of the layers {name} compresses")
        self.compress()
        for name, entry in masks.items():
            self.set_mask(self.layer(name), entry)

    def export_model(self, model_path: str | os.PathLike, mask_path: str | os.PathLike | None = None,
                     onnx_path: str | os.PathLike | None = None, input_shape: Any = None,
                     device: Any = None, dummy_input: Any = None) -> None:
        """Write the weights with masks baked in (loadable into the original model class), the
        masks (``mask_path``) and an ONNX file (``onnx_path``, traced on ``dummy_input``, else a float input of
        ``input_shape``, else the pruner's own ``dummy_input``).

        Every file is written to a temporary name first and renamed only when all of them are written: on any
        error no destination is created or changed. The compressed model is left as is.
        """
        self._require_wrapped("export_model")
        example = onnx_example(self, onnx_path, dummy_input, input_shape)
        if onnx_path is not None:
            require("onnxscript", "export_model(onnx_path=...)")  # before any file is written
        if not distributed.is_main_process():  # under torch.distributed only rank 0 writes
            return
        masks = self.get_masks() if mask_path is not None else None
        write_all([
            (onnx_path, lambda tmp: self.adapter.export_onnx(self.model, self.layers, tmp, example, device)),
            (model_path, lambda tmp: self.adapter.save_weights(self.model, self.layers, tmp)),
            (mask_path, lambda tmp: self.adapter.save_masks(masks, tmp))])
