"""The :class:`Quantizer` base: fake quantization of weights, inputs and outputs on every forward.

A quantizer selects layers with a config_list (``quant_types`` required; ``quant_bits`` an int
or ``{quant_type: bits}``, default 8; ``quantize_op_action`` ``'quantize'`` / ``'rewrite'`` /
``'disable'``), wraps them on :meth:`Quantizer.compress`, and on every forward calls
:meth:`Quantizer.quantize_input`, :meth:`Quantizer.quantize_weight` and
:meth:`Quantizer.quantize_output`. Gradients come from ``self.quant_grad``
(:class:`~slimkit.compression.quant.QuantGrad`, straight-through by default).

The built-in implementations of the three methods are affine fake quantization under the
target profile (``profile='tflite'`` by default): weights per-channel symmetric, activations
asymmetric with ranges from an observer. All parameters live in one table,
:attr:`Quantizer.params` (``{layer_name: {key: QParams}}``, keys ``'weight'``, ``'input'``,
``'output'``, and ``'output@1'``... for further calls of a module called several times), which
:meth:`Quantizer.calibration` turns into the calibration dict.

Example (a custom quantizer with a custom gradient):

>>> import torch
>>> from slimkit.compression import Quantizer, QuantGrad, QuantType
>>> class ClipGrad(QuantGrad):
...     @staticmethod
...     def quant_backward(tensor, grad_output, quant_type, **kwargs):
...         grad_output[abs(tensor) > 1] = 0
...         return grad_output
>>> class SignQuantizer(Quantizer):
...     def __init__(self, model, config_list):
...         super().__init__(model, config_list)
...         self.quant_grad = ClipGrad
...     def quantize_weight(self, weight, config, **kwargs):
...         return torch.where(weight >= 0, 1.0, -1.0)
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False))
>>> with torch.no_grad():
...     _ = model[0].weight.copy_(torch.tensor([[0.5, -2.0]]))
>>> model = SignQuantizer(model, [{'quant_types': ['weight'], 'op_types': ['Linear']}]).compress()
>>> model(torch.ones(1, 2)).sum().backward()
>>> model[0].module.weight.grad.tolist()
[[1.0, 0.0]]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
from schema import And, Or

from slimkit.compression.calibration import load_calibration, save_calibration
from slimkit.compression.channels import normalize_axis
from slimkit.compression.compressor import Compressor, Layer, onnx_example
from slimkit.compression.config import ConfigKey, parse_config_list
from slimkit.compression.finite import check_finite
from slimkit.compression.observers import MinMaxObserver, Observer
from slimkit.compression.profiles import QuantProfile, get_profile
from slimkit.compression.quant import (
    QUANT_TYPE_NAMES,
    QParams,
    QuantGrad,
    QuantType,
    affine_params,
    bias_params,
    bias_scale_floor,
    clamp_cannot_bind,
    floor_weight_scales,
)
from slimkit.compression.state import qparams_from_state, qparams_state
from slimkit.errors import CompressionStateError, ConfigError, SlimkitError, UnsupportedOpError
from slimkit.utils import distributed
from slimkit.utils.files import write_all
from slimkit.utils.optional import require

QUANT_ACTIONS = ("quantize", "rewrite", "disable")
GRAPH_KEY = "__graph__"
"""Calibration key holding whole-graph tensors: ``{tensor_key: {'kind', 'output_scale', ...}}``."""


def _bits(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 32


QUANT_TYPES = And([Or(*QUANT_TYPE_NAMES)], lambda v: len(v) > 0)
QUANT_BITS = Or(And(_bits), And({Or(*QUANT_TYPE_NAMES): And(_bits)}, lambda v: len(v) > 0))

QUANTIZER_KEYS: dict[str, ConfigKey] = {
    "quant_types": ConfigKey(QUANT_TYPES, f"a non-empty list of {list(QUANT_TYPE_NAMES)}", convert=tuple),
    "quant_bits": ConfigKey(QUANT_BITS, "an int in 1..32, or a dict {quant_type: int in 1..32} with quant_type "
                            f"in {list(QUANT_TYPE_NAMES)}", 8),
    "quantize_op_action": ConfigKey(Or(*QUANT_ACTIONS), f"one of {list(QUANT_ACTIONS)}", "quantize"),
}


def _finite_range(observer: Observer, where: str, remedy: str) -> tuple[Any, Any]:
    """The observer's range; raises :class:`UnsupportedOpError` naming ``where`` if it holds inf or NaN."""
    lo, hi = observer.range()
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise UnsupportedOpError(f"{where} took values in [{np.min(lo)}, {np.max(hi)}] during calibration: an int8 "
                                 f"grid cannot hold inf or NaN. Expected finite values: {remedy}.")
    return lo, hi


def differentiable(method: Any) -> Any:
    """Mark a built-in ``quantize_*`` method whose result already carries its own straight-through
    gradient (so the default :class:`QuantGrad` need not wrap it)."""
    method._slimkit_differentiable = True
    return method


def traceable(method: Any) -> Any:
    """Mark a ``quantize_*`` method (or a ``quant_backward``) that computes with the ops seam only, from
    parameters that do not change between calls: a graph backend (Keras) may trace it as is."""
    method._slimkit_traceable = True
    return method


class LayerQuant:
    """Quantization state of one layer: what is quantized, with how many bits, its observers."""

    def __init__(self, layer: Layer, algorithm: str = "Quantizer", activation_bits: int | None = None):
        config = layer.config
        self.layer = layer
        self.action = config.quantize_op_action or "quantize"
        types = tuple(QuantType(t) for t in config.quant_types)
        if self.action == "disable":
            types = ()
        elif self.action == "rewrite":
            types = tuple(t for t in types if t is not QuantType.QUANT_WEIGHT)
        if layer.kernel is not None:  # an extra kernel's entry: the layer's input (and output) are its own entry's
            kept = {QuantType.QUANT_WEIGHT, *([QuantType.QUANT_OUTPUT] if layer.kernel_output else [])}
            types = tuple(t for t in types if t in kept)
        self.types = types
        bits = config.quant_bits
        self.bits = {t: (bits if isinstance(bits, int) else bits.get(t.value, 8)) for t in QuantType}
        for name in (bits if isinstance(bits, Mapping) else {}):
            if name not in config.quant_types:
                raise ConfigError(f"{algorithm}: config_list[{config.index}]['quant_bits'] names {name!r}, which is "
                                  f"not in quant_types. Expected keys among {list(config.quant_types)}. "
                                  f"Received: quant_bits={bits!r}")
        if activation_bits is not None:  # the profile's kernels fix the activations' width
            for t in (QuantType.QUANT_INPUT, QuantType.QUANT_OUTPUT):
                if isinstance(bits, Mapping) and bits.get(t.value, activation_bits) != activation_bits:
                    raise ConfigError(f"{algorithm}: config_list[{config.index}]['quant_bits'] gives {t.value!r} "
                                      f"{bits[t.value]} bits, but the profile's kernels take {activation_bits}-bit "
                                      f"activations. Expected quant_bits[{t.value!r}] == {activation_bits} or left "
                                      f"out. Received: quant_bits={bits!r}")
                self.bits[t] = activation_bits
        self.observers: dict[str, Observer] = {}
        self.calls = 1  # calls of the layer per forward pass (from the captured graph)


def parse_configs(config_list: list[dict], quantizer: Any) -> list[Any]:
    return parse_config_list(config_list, quantizer.config_keys, type(quantizer).__name__)


class GraphSlot:
    """Stands in for a layer when whole-graph tensors are observed (training flag, config)."""

    name = "__graph__"

    def __init__(self, model: Any, config: Any):
        self.module, self.config = model, config


def _range(params: QParams) -> tuple[float, float]:
    """The real range ``params`` was made from (its grid's ends where it holds none)."""
    lo = float(params.min[0]) if params.min is not None else float((params.qmin - params.zero_point[0]) *
                                                                     params.scale[0])
    hi = float(params.max[0]) if params.max is not None else float((params.qmax - params.zero_point[0]) *
                                                                     params.scale[0])
    return lo, hi


class Quantizer(Compressor):
    """Base of every quantizer. Override :meth:`quantize_weight`, :meth:`quantize_input` and / or
    :meth:`quantize_output` (and assign ``self.quant_grad``) to write a new one.

    Args:
        model: a ``torch.nn.Module`` or a ``keras.Model`` (its adapter supplies ``quant_backend``).
        config_list: dicts with ``quant_types``, ``quant_bits``, ``op_types`` / ``op_names``.
        optimizer: the training optimizer (algorithms that step with it). ``optimizer`` and ``dummy_input`` may
            also come positionally, in NNI's order: ``QAT_Quantizer(model, config_list, optimizer, dummy_input)``.
        dummy_input: an example input; lets the quantizer see the graph (BN folding, conv+BN+ReLU
            fusion, per-call ranges, whole-graph quantization with ``op_types: ['default']``).
        profile: target profile name (``'tflite'``, ``'tflite_per_tensor'``, ``'tflite_int16x8'``, ``'onnx'``,
            ``'symmetric'``, ``'pow2'``) or object.

    Raises:
        ConfigError: a bad config_list (index, key, value and what is allowed in the message).
    """

    config_keys: ClassVar[Mapping[str, ConfigKey]] = QUANTIZER_KEYS
    default_op_role: ClassVar[str] = "weighted"
    fold_bn: ClassVar[bool] = False  # fold BatchNorm into the preceding conv (needs dummy_input)
    live_params: ClassVar[bool] = True  # recompute activation parameters after every observed batch
    weight_use: ClassVar[str] = "quantizes it"

    def __init__(self, model: Any, config_list: list[dict], optimizer: Any = None, dummy_input: Any = None,
                 *, profile: str | QuantProfile = "tflite"):
        super().__init__(model, config_list)
        self.profile = get_profile(profile)
        self.optimizer = optimizer
        self.dummy_input = dummy_input
        self.quant_grad: type[QuantGrad] = QuantGrad
        self.backend = getattr(self.adapter, "quant_backend", None)
        if self.backend is None:
            raise SlimkitError(f"{type(self).__name__}: the {self.adapter.name} adapter has no quant_backend yet. "
                               "Expected a framework with quantization support (PyTorch, Keras).")
        self.ops = self.backend.ops
        self.states = {layer.name: LayerQuant(layer, type(self).__name__, self.profile.activation_bits)
                       for layer in self.layers}
        self.params: dict[str, dict[str, QParams]] = {layer.name: {} for layer in self.layers}
        self._fixed_keys: dict[str, set[str]] = {}  # layer -> tensors pinned by set_fixed_params
        self.observing = True   # observers record ranges on forward
        self.frozen = False     # parameters fixed (after calibration / for export)
        self.graph_plan: Any = None
        # whole-graph quantization: a config dict with op_types ['default'] quantizing outputs
        self.graph_config = next((cfg for cfg in parse_configs(config_list, self) if not cfg.exclude
                                  and "default" in (cfg.op_types or ()) and "output" in cfg.quant_types), None)
        self.whole_graph = self.graph_config is not None and dummy_input is not None
        self.graph_params: dict[str, QParams] = {}
        self.graph_observers: dict[str, Observer] = {}
        self.graph_meta: dict[str, dict[str, Any]] = {}
        self.graph_slot = GraphSlot(model, self.graph_config)
        self.tensor_listener: Any = None  # set by the backend in whole-graph mode
        self._in_quant = 0
        self.integer_arithmetic: str | None = None  # set inside emulate_integer()
        if dummy_input is not None:  # without it, BN stays unfolded and modules get one range set
            self.graph_plan = self.backend.plan(model, dummy_input, self)

    def validate_layer(self, layer: Layer) -> None:
        if "weight" in (layer.config.quant_types or ()) and not self.adapter.has_weight(layer.module):
            raise ConfigError(f"{type(self).__name__}: config_list[{layer.config.index}] selects layer {layer.name!r} "
                              f"of type {layer.type}, which has no weight to quantize. Expected quant_types without "
                              f"'weight' for it, or narrower 'op_types'. Received: quant_types="
                              f"{list(layer.config.quant_types)!r}")

    # ---------------------------------------------------------------- lifecycle
    def compress(self) -> Any:
        """Wrap the selected layers with fake quantization; returns the (same) model.

        Raises:
            NonFiniteError: the weight of a layer whose weights it quantizes holds NaN or infinity (nothing is wrapped
                then).
        """
        if not self.wrapped:
            self.check_weights([layer for layer in self.layers if "weight" in (layer.config.quant_types or ())])
            self.backend.wrap(self.model, self.layers, self)
            self.wrapped = True
        return self.model

    @contextlib.contextmanager
    def emulate_integer(self, arithmetic: str = "xnnpack") -> Iterator[None]:
        """Inside the block, the quantized model (in eval mode) computes the deployed int8 kernels' arithmetic bit for
        bit instead of float32 fake quantization: integer sums, int32 bias, the kernel's requantization and rounding.

        The fake-quant model already lands on the same integers except at rounding ties (a few outputs in a
        million); a deep network passes each such step on. Evaluate under this block to get exactly what the
        converted int8 ``.tflite`` file computes. ``arithmetic``: ``'xnnpack'``, LiteRT's default CPU path (for int16
        activations, profile ``'tflite_int16x8'``: LiteRT's builtin 16x8 kernels, which that path runs them on).
        PyTorch only; the wrapped layers need input, weight and output parameters (calibrate first).

        Example:

        >>> import torch
        >>> from slimkit.algorithms.quantization import PostTrainingQuantizer
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
        >>> x = torch.randn(8, 1, 6, 6)
        >>> config = [{'quant_types': ['input', 'weight', 'output'], 'op_types': ['Conv2d']}]
        >>> quantizer = PostTrainingQuantizer(model, config, dummy_input=x[:1])
        >>> _ = quantizer.compress(); quantizer.calibrate([x])
        >>> with quantizer.emulate_integer():
        ...     exact = model(x)
        >>> bool((exact - model(x)).abs().max() <= quantizer.params['0']['output'].scale[0])
        True
        """
        supported = getattr(self.backend, "integer_arithmetics", ())
        if arithmetic not in supported:
            raise SlimkitError(f"{type(self).__name__}.emulate_integer: arithmetic {arithmetic!r} is not available for "
                               f"{self.adapter.name} models. Expected one of {list(supported)}"
                               + ("" if supported else " (none: integer emulation is PyTorch only)") + ".")
        previous, self.integer_arithmetic = self.integer_arithmetic, arithmetic
        try:
            yield
        finally:
            self.integer_arithmetic = previous

    def unwrap_model(self) -> Any:
        """Restore the float layers (with their trained weights); returns the model."""
        if self.wrapped:
            self.backend.unwrap(self.model, self.layers, self)
            self.wrapped = False
        return self.model

    # ---------------------------------------------------------------- checkpoints
    def collect_state(self) -> dict[str, Any]:
        """Every parameter, pinned parameter, observer's statistics (layers and whole-graph tensors) and switch."""
        return {**super().collect_state(),
                "params": {name: {key: qparams_state(params) for key, params in table.items()}
                           for name, table in self.params.items()},
                "fixed": {name: sorted(keys) for name, keys in self._fixed_keys.items()},
                "observers": {name: {key: observer.state_dict() for key, observer in state.observers.items()}
                              for name, state in self.states.items()},
                "graph_params": {key: qparams_state(params) for key, params in self.graph_params.items()},
                "graph_observers": {key: observer.state_dict() for key, observer in self.graph_observers.items()},
                "graph_meta": self.graph_meta, "observing": self.observing, "frozen": self.frozen}

    def check_state(self, state: Mapping[str, Any]) -> None:
        super().check_state(state)
        unknown = sorted((set(state["params"]) | set(state["observers"]) | set(state["fixed"])) - set(self.params))
        if unknown:
            raise CompressionStateError(f"{type(self).__name__}.load_state_dict: the state has parameters of layers "
                                        f"{unknown} that this quantizer does not compress. Expected the state of the "
                                        "same model and config_list.")

    def restore_state(self, state: Mapping[str, Any]) -> None:
        super().restore_state(state)
        for name, table in self.params.items():
            saved = state["params"].get(name, {})
            for key in [key for key in table if key not in saved]:
                table.pop(key)
            for key, entry in saved.items():
                table[key] = qparams_from_state(entry)
        self._fixed_keys = {name: set(keys) for name, keys in state["fixed"].items()}
        for layer in self.layers:
            observers, saved = self.states[layer.name].observers, state["observers"].get(layer.name, {})
            for key in [key for key in observers if key not in saved]:
                observers.pop(key)
            for key, entry in saved.items():
                observer = self.make_observer(layer, key)
                observer.load_state_dict(entry)
                observers[key] = observer
        self.graph_params = {key: qparams_from_state(entry) for key, entry in state["graph_params"].items()}
        self.graph_observers = {}
        for key, entry in state["graph_observers"].items():
            observer = self.graph_observers[key] = self.make_observer(self.graph_slot, key)
            observer.load_state_dict(entry)
        self.graph_meta = {key: dict(entry) for key, entry in state["graph_meta"].items()}
        self.observing, self.frozen = bool(state["observing"]), bool(state["frozen"])
        self.state_changed()

    # ---------------------------------------------------------------- methods a subclass overrides
    @differentiable
    def quantize_weight(self, weight: Any, config: Any, **kwargs: Any) -> Any:
        """Fake-quantize ``weight`` (built-in: per-channel symmetric under the profile)."""
        layer: Layer = kwargs["layer"]
        params = self.weight_params(layer, weight)
        return self.ops.fake_quant(weight, params) if self.should_fake_quant(layer) else weight

    @differentiable
    def quantize_input(self, *inputs: Any, config: Any, **kwargs: Any) -> Any:
        """Fake-quantize the layer's first input (built-in: observed range, activation scheme)."""
        x = inputs[0]
        quantized = self.quantize_activation(kwargs["layer"], x, kwargs.get("key", "input"))
        return (quantized, *inputs[1:]) if len(inputs) > 1 else quantized

    @differentiable
    def quantize_output(self, output: Any, config: Any, **kwargs: Any) -> Any:
        """Fake-quantize the layer's output (built-in: observed range, activation scheme)."""
        return self.quantize_activation(kwargs["layer"], output, kwargs.get("key", "output"))

    # ---------------------------------------------------------------- built-in affine machinery
    def make_observer(self, layer: Layer, key: str) -> Observer:
        """The activation observer of ``layer``'s tensor ``key``; subclasses pick EMA / histogram."""
        return MinMaxObserver()

    def weight_params(self, layer: Layer, weight: Any) -> QParams:
        """Per-channel (or per-tensor) symmetric parameters of ``weight`` under the profile (the pinned ones after
        :meth:`set_fixed_params`: AdaRound's weights lie on their grid)."""
        table = self.params[layer.name]
        if (self.frozen or "weight" in self._fixed_keys.get(layer.name, ())) and "weight" in table:
            return table["weight"]
        scheme = self.profile.weight
        bits = self.states[layer.name].bits[QuantType.QUANT_WEIGHT]
        axis = layer.out_axis if scheme.per_channel else None
        if axis is not None:
            axis = normalize_axis(axis, len(tuple(weight.shape)))
        params = self._weight_grid(weight, bits, axis, f"the weight of layer {layer.name!r}")
        bias, input_scale = self._bias(layer), self._observed_input_scale(layer)
        if bias is not None and input_scale is not None:
            params = floor_weight_scales(params, bias, input_scale, self.profile.bias_bits)
        table["weight"] = params
        return params

    def graph_weight_params(self, weight: Any) -> QParams | None:
        """Whole-graph mode: the parameters of a weight a functional conv / linear reads from the model's own
        parameters (``F.linear(x, self.weight)``), under the profile's weight scheme with the output channels on axis
        0, as a layer's weight gets them; None where the whole-graph config quantizes no weights, and under int16
        activations."""
        config = self.graph_config
        if not self.whole_graph or "weight" not in config.quant_types or self.profile.activation_bits == 16:
            return None  # int16 activations: no 16x8 form emulated for it yet (the converter names the float op)
        bits = config.quant_bits if isinstance(config.quant_bits, int) else config.quant_bits.get("weight", 8)
        axis = 0 if self.profile.weight.per_channel else None
        return self._weight_grid(weight, bits, axis, "a weight read by a functional layer")

    def _weight_grid(self, weight: Any, bits: int, axis: int | None, what: str) -> QParams:
        """``weight``'s parameters under the profile's weight scheme from its min / max (per ``axis``), after checking
        they are finite (``what`` names the weight in the error)."""
        lo, hi = self.ops.min_max(weight, axis)
        check_finite(lo, hi, where=f"{what} ({type(self).__name__} quantizes it)")
        return affine_params(lo, hi, bits, self.profile.weight, axis)

    def activation_params(self, layer: Layer, key: str) -> QParams | None:
        """Parameters of an activation from its observer (None before it has seen data)."""
        observer = self.states[layer.name].observers.get(key)
        if observer is None or not observer.ready:
            return self.params[layer.name].get(key)
        qtype = QuantType.QUANT_INPUT if key.startswith("input") else QuantType.QUANT_OUTPUT
        bits = self.states[layer.name].bits[qtype]
        lo, hi = _finite_range(observer, f"layer {layer.name!r} ({key})",
                               f"exclude it ({{'exclude': True, 'op_names': [{layer.name!r}]}})")
        floor = self.input_scale_floor(layer) if qtype is QuantType.QUANT_INPUT else 0.0
        return self.range_params(lo, hi, bits, floor)

    def range_params(self, lo: Any, hi: Any, bits: int, min_scale: float = 0.0) -> QParams:
        """Activation parameters covering ``[lo, hi]`` under the profile, the scale at least ``min_scale`` and the
        profile's ``min_activation_scale``."""
        return affine_params(lo, hi, bits, self.profile.activation,
                             min_scale=max(min_scale, self.profile.min_activation_scale))

    def input_scale_floor(self, layer: Layer) -> float:
        """The least input scale at which the layer's (BN-folded) bias takes at most half of the profile's
        ``bias_bits`` range on the grid ``input_scale * weight_scale``, leaving the other half to the sum of products
        (0 without weight parameters or a bias yet). A nearly dead input range (a tiny scale) would otherwise push the
        int32 bias, or the accumulator, past its range and silently change the layer."""
        weight, bias = self.params[layer.name].get("weight"), self._bias(layer)
        return 0.0 if weight is None or bias is None else bias_scale_floor(bias, weight.scale, self.profile.bias_bits)

    def _bias(self, layer: Layer) -> Any:
        """The layer's (BN-folded) bias where the profile stores biases as integers and the layer's weight is
        quantized; else None."""
        effective_bias = getattr(self.backend, "effective_bias", None)
        if not getattr(self.profile, "bias_bits", None) or effective_bias is None or \
                not self.quantizes(layer, QuantType.QUANT_WEIGHT):
            return None
        return effective_bias(layer)

    def _observed_input_scale(self, layer: Layer) -> float | None:
        """The scale of the layer's own input grid as its observer's range gives it, before any floor (None where the
        layer's input is not quantized or not observed yet): per-channel weight scales are floored against it
        (:func:`~slimkit.compression.quant.floor_weight_scales`)."""
        observer = self.states[layer.name].observers.get("input")
        if observer is None or not observer.ready or not self.quantizes(layer, QuantType.QUANT_INPUT):
            return None
        lo, hi = observer.range()
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            return None  # activation_params names the layer
        return float(self.range_params(lo, hi, self.states[layer.name].bits[QuantType.QUANT_INPUT]).scale[0])

    def activation_bits(self, layer: Any, key: str) -> int:
        if isinstance(layer, GraphSlot):
            if self.profile.activation_bits is not None:
                return self.profile.activation_bits
            bits = layer.config.quant_bits
            return bits if isinstance(bits, int) else bits.get("output", 8)
        qtype = QuantType.QUANT_INPUT if key.startswith("input") else QuantType.QUANT_OUTPUT
        return self.states[layer.name].bits[qtype]

    def quantize_graph_tensor(self, key: str, x: Any, kind: str, input_params: list[QParams | None],
                              **meta: Any) -> Any:
        """Whole-graph mode: quantize a functional tensor (``+``, ``cat``, pooling ...) under the profile's
        rules: fixed parameters (softmax, logistic, tanh), the input's parameters for ops that only move
        values (max-pool, reshape), the union of the inputs' ranges for concatenation, else observed."""
        slot = self.graph_slot
        bits = self.activation_bits(slot, key)
        params, shared_from = self._rule_params(kind, bits, input_params, meta.get("inputs") or [None])
        if self.frozen and key in self.graph_params:
            # a move (reshape, expand ...) keeps its input's grid on every call, whatever its key: model code may run
            # other moves under torch.export than eagerly (Hugging Face repeats GQA keys in the capture only), which
            # shifts the keys of the moves after them
            if params is not None and len(input_params) == 1:
                self.graph_params[key] = params  # what the readers of this tensor are told its grid is
            params = self.graph_params[key]
            return self.ops.fake_quant(x, params) if self.should_fake_quant(slot) else x
        info = {"kind": kind, "fixed": self.profile.fixed_output(kind, 8) is not None, "shared_from": shared_from,
                **meta}
        if params is None:
            if self.should_observe(slot):
                observer = self.graph_observers.get(key)
                if observer is None:
                    observer = self.graph_observers[key] = self.make_observer(slot, key)
                observer.observe(x, self.ops, where=f"the whole-graph tensor {key!r} ({type(self).__name__} "
                                 "quantizes it)")
                if self.live_params:
                    lo, hi = observer.range()
                    self.graph_params[key] = self.range_params(lo, hi, bits)
            params = self.graph_params.get(key)
        else:
            self.graph_params[key] = params
        self.graph_meta[key] = info
        if params is None or not self.should_fake_quant(slot):
            return x
        return self.ops.fake_quant(x, params)

    def _rule_params(self, kind: str, bits: int, input_params: list[QParams | None],
                     input_names: list[str | None]) -> tuple[QParams | None, str | None]:
        """Parameters the profile dictates for an op of ``kind`` given its inputs' parameters, and where
        they come from; ``(None, None)`` when the tensor needs its own observed range."""
        fixed = self.profile.fixed_output(kind, bits)
        if fixed is not None:
            return fixed, None
        known = [p for p in input_params if p is not None]
        if len(input_params) == 1 and known and not known[0].per_channel and \
                clamp_cannot_bind(kind, int(known[0].zero_point[0]), known[0].qmin, known[0].qmax,
                                  float(known[0].scale[0])):
            return known[0], input_names[0]  # relu(relu(x)): the same values, kept on their grid (no op in the file)
        if not self.profile.shares_input_params(kind) or not known or len(known) != len(input_params):
            return None, None
        if kind == "cat" and len(known) > 1:
            ranges = [_range(p) for p in known]
            lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
            if (lo, hi) in ranges:  # one input spans the others: its own grid (recomputed, its scale could move a bit)
                return known[ranges.index((lo, hi))], "inputs"
            return self.range_params(np.array([lo]), np.array([hi]), bits), "inputs"
        if known[0].per_channel:
            return None, None
        return known[0], input_names[0]

    def owner_params(self, owner: str | None) -> QParams | None:
        """The current parameters of a whole-graph tensor's input: ``'layer:<name>'`` (that layer's output),
        ``'graph:<key>'`` (a graph tensor) or None (unknown)."""
        if owner is None:
            return None
        kind, _, name = owner.partition(":")
        if kind == "layer":
            return self.params.get(name, {}).get("output") if name in self.params else None
        return self.graph_params.get(name)

    def resolve_graph_params(self) -> None:
        """Apply the profile's rules (fixed / shared parameters) over the planned graph, in order."""
        plan = self.graph_plan
        if plan is None or not getattr(plan, "graph", None):
            return

        for tensor in plan.graph.values():
            if tensor.key not in self.graph_meta and tensor.key not in self.graph_params:
                continue
            inputs = [self.owner_params(owner) for owner in tensor.inputs]
            params, shared_from = self._rule_params(tensor.kind, self.activation_bits(self.graph_slot, tensor.key),
                                                    inputs, list(tensor.inputs) or [None])
            if params is not None:
                self.graph_params[tensor.key] = params
                self.graph_meta.setdefault(tensor.key, {"kind": tensor.kind})["shared_from"] = shared_from

    def should_observe(self, layer: Layer) -> bool:
        return self.observing and not self.frozen

    def should_fake_quant(self, layer: Layer) -> bool:
        return True

    def quantize_activation(self, layer: Layer, x: Any, key: str) -> Any:
        """Observe ``x`` (when observing) and fake-quantize it with the tensor's current parameters."""
        table = self.params[layer.name]
        fixed = table.get(key) if key in self._fixed_keys.get(layer.name, ()) else None
        if fixed is None:
            if self.should_observe(layer):
                state = self.states[layer.name]
                observer = state.observers.get(key)
                if observer is None:
                    observer = state.observers[key] = self.make_observer(layer, key)
                observer.observe(x, self.ops, where=f"the {key} of layer {layer.name!r} ({type(self).__name__} "
                                 "quantizes it)")
                if self.live_params:
                    params = self.activation_params(layer, key)
                    if params is not None:
                        table[key] = params
            params = table.get(key)
        else:
            params = fixed
        if params is None or not self.should_fake_quant(layer):
            return x
        return self.ops.fake_quant(x, params)

    def set_fixed_params(self, layer_name: str, key: str, params: QParams) -> None:
        """Pin ``layer_name``'s tensor ``key`` to ``params`` (profile-fixed outputs, shared params)."""
        self.params[layer_name][key] = params
        self._fixed_keys.setdefault(layer_name, set()).add(key)
        self.state_changed()

    def state_changed(self) -> None:
        """Tell the backend that parameters or switches changed from Python (freeze, loaded ranges, a step), for
        backends that keep a copy in the compiled graph (Keras)."""
        notify = getattr(self.backend, "state_changed", None)
        if notify is not None and self.wrapped:
            notify(self)

    # ---------------------------------------------------------------- dispatch (called by wrappers)
    def _grad_kwargs(self, layer: Layer, key: str, like: Any) -> dict[str, Any]:
        """Keywords of ``quant_backward``: ``scale`` / ``zero_point`` as native tensors on ``like``'s device
        (shaped to broadcast along the channel axis when per-channel), ``qmin``, ``qmax``, ``params``, ``ops``."""
        params = self.params[layer.name].get(key)
        if params is None:
            return {"ops": self.ops}
        scale, zero_point = self.ops.broadcastable(params, like)
        return {"ops": self.ops, "params": params, "scale": scale, "zero_point": zero_point,
                "qmin": params.qmin, "qmax": params.qmax}

    def _apply(self, method: Any, qtype: QuantType, layer: Layer, key: str, tensor: Any, call: int) -> Any:
        self._in_quant += 1
        try:
            result = self._apply_inner(method, qtype, layer, key, tensor, call)
        finally:
            self._in_quant -= 1
        if self.tensor_listener is not None and qtype is not QuantType.QUANT_WEIGHT:
            self.tensor_listener(result[0] if isinstance(result, tuple) else result, layer.name, key)
        return result

    def _apply_inner(self, method: Any, qtype: QuantType, layer: Layer, key: str, tensor: Any, call: int) -> Any:
        kwargs = {"layer": layer, "key": key, "call_index": call, "quantizer": self}
        name = f"quantize_{qtype.value}"
        if self.quant_grad is QuantGrad and getattr(getattr(type(self), name), "_slimkit_differentiable", False):
            return method(tensor, config=layer.config, **kwargs)
        grad = self.quant_grad

        def forward(x: Any) -> Any:
            out = method(x, config=layer.config, **kwargs)
            return out[0] if isinstance(out, tuple) else out

        def backward(x: Any, grad_output: Any) -> Any:
            return grad.quant_backward(x, grad_output, qtype, **self._grad_kwargs(layer, key, x))

        return self.ops.straight_through(tensor, forward, backward)

    def _key(self, base: str, call: int) -> str:
        return base if call == 0 else f"{base}@{call}"

    def forward_input(self, layer: Layer, inputs: tuple, call: int = 0) -> tuple:
        if QuantType.QUANT_INPUT not in self.states[layer.name].types or not inputs:
            return inputs
        first = self._apply(self.quantize_input, QuantType.QUANT_INPUT, layer, self._key("input", call),
                            inputs[0], call)
        if isinstance(first, tuple):
            return first
        return (first, *inputs[1:])

    def forward_weight(self, layer: Layer, weight: Any) -> Any:
        if QuantType.QUANT_WEIGHT not in self.states[layer.name].types:
            return weight
        return self._apply(self.quantize_weight, QuantType.QUANT_WEIGHT, layer, "weight", weight, 0)

    def forward_output(self, layer: Layer, output: Any, call: int = 0) -> Any:
        if QuantType.QUANT_OUTPUT not in self.states[layer.name].types:
            return output
        return self._apply(self.quantize_output, QuantType.QUANT_OUTPUT, layer, self._key("output", call),
                           output, call)

    def weight_grad_is_identity(self, layer: Layer) -> bool:
        """Whether :meth:`forward_weight`'s gradient is the identity for ``layer``: the built-in per-channel weight
        quantization with the default straight-through gradient (or no weight quantization). A backend may then
        fold per-channel scales around it with a closed-form gradient (BatchNorm folding in training)."""
        if not self.quantizes(layer, QuantType.QUANT_WEIGHT):
            return True
        cls = type(self)
        return (self.quant_grad is QuantGrad and cls.quantize_weight is Quantizer.quantize_weight
                and cls.weight_params is Quantizer.weight_params and self.profile.weight.per_channel)

    def quantizes(self, layer: Layer, qtype: QuantType) -> bool:
        return qtype in self.states[layer.name].types

    # ---------------------------------------------------------------- parameters, calibration, export
    def update_activation_params(self) -> None:
        """Recompute every activation's parameters from its observer (after calibration)."""
        for layer in self.layers:
            for key in self.states[layer.name].observers:
                if key in self._fixed_keys.get(layer.name, ()):
                    continue
                params = self.activation_params(layer, key)
                if params is not None:
                    self.params[layer.name][key] = params
        for key, observer in self.graph_observers.items():
            if observer.ready:
                meta = self.graph_meta.get(key, {})
                lo, hi = _finite_range(observer, f"whole-graph tensor {key!r} (op {meta.get('kind')!r} in module "
                                       f"{meta.get('module')!r})", "quantize named layer types instead of 'default' "
                                       "in op_types, or keep inf / NaN out of the values computed from the input")
                self.graph_params[key] = self.range_params(lo, hi, self.activation_bits(self.graph_slot, key))
        self.resolve_graph_params()
        self.state_changed()

    def refresh_weight_params(self) -> None:
        """Recompute the weight parameters from the current weights (masked, BN-folded where folded)."""
        was_frozen = self.frozen
        self.frozen = False
        try:
            for layer in self.layers:
                if layer.wrapper is None or not self.quantizes(layer, QuantType.QUANT_WEIGHT):
                    continue
                self.quantize_weight(self.backend.effective_weight(layer), layer.config, layer=layer, key="weight",
                                     call_index=0, quantizer=self)
        finally:
            self.frozen = was_frozen

    def freeze(self) -> None:
        """Stop observing and fix every parameter (weights from the current weights)."""
        if self.wrapped:
            self.refresh_weight_params()
        self.frozen = True
        self.state_changed()

    def unfreeze(self) -> None:
        self.frozen = False
        self.state_changed()

    @contextlib.contextmanager
    def fixed_parameters(self) -> Iterator[None]:
        """Frozen (:meth:`freeze`) for the block and as before after it: what an export reads while it traces the model
        (a QAT model fresh from training included)."""
        was_frozen = self.frozen
        if not was_frozen:
            self.freeze()
        try:
            yield
        finally:
            if not was_frozen:
                self.unfreeze()

    def calibration(self) -> dict[str, dict[str, Any]]:
        """The calibration dict: ``{layer_name: {'weight_bits', 'weight_scale', 'weight_zero_point',
        'output_bits', 'output_scale', 'output_zero_point', 'input_...', 'bias_...', ...}}``.

        Per-channel scales and zero points are lists (``weight_axis`` names the channel axis). A layer
        called ``n > 1`` times has ``'calls': [{'output_scale', ...}, ...]`` with one entry per call.
        """
        was_frozen = self.frozen
        if self.wrapped:
            self.refresh_weight_params()
        calibration: dict[str, dict[str, Any]] = {}
        for layer in self.layers:
            state, table = self.states[layer.name], self.params[layer.name]
            entry: dict[str, Any] = {"type": layer.type, "quant_types": [t.value for t in state.types],
                                     "quantize_op_action": state.action}
            for key in ("weight", "input", "output"):
                if key in table and QuantType(key) in state.types:
                    entry.update(table[key].as_dict(key))
            input_params = table.get("input") if QuantType.QUANT_INPUT in state.types else table.get("input_from_graph")
            if input_params is not None and "input_scale" not in entry:
                entry.update(input_params.as_dict("input"))
            if "weight" in table and input_params is not None and QuantType.QUANT_WEIGHT in state.types \
                    and table["weight"].bits > 1 and input_params.scale.size == 1:
                entry.update(bias_params(input_params, table["weight"], self.profile.bias_bits).as_dict("bias"))
            calls = []
            for call in range(1, state.calls):
                call_entry = {}
                for base in ("input", "output"):
                    key = self._key(base, call)
                    if key in table:
                        call_entry.update(table[key].as_dict(base))
                calls.append(call_entry)
            if calls:
                entry["calls"] = [{k: v for k, v in entry.items() if k.split("_")[0] in ("input", "output")
                                   or k.startswith("tracked")}] + calls
            extra = self.backend.layer_extras(layer, self) if self.wrapped else {}
            entry.update(extra)
            calibration[layer.name] = entry
        if self.graph_params:
            self.resolve_graph_params()
            graph = {}
            for key, params in self.graph_params.items():
                graph[key] = {**self.graph_meta.get(key, {}), **params.as_dict("output")}
            calibration[GRAPH_KEY] = graph
        self.frozen = was_frozen
        return calibration

    def load_calibration(self, calibration: Mapping[str, Mapping[str, Any]] | str | os.PathLike) -> None:
        """Start from saved ranges (e.g. a :class:`PostTrainingQuantizer`'s): observers of every
        matching activation are set to the recorded ``tracked_min_*`` / ``tracked_max_*``."""
        if isinstance(calibration, (str, os.PathLike)):
            calibration = load_calibration(calibration, self.backend)
        for layer in self.layers:
            entry = calibration.get(layer.name)
            if entry is None:
                continue
            state = self.states[layer.name]
            per_call = entry.get("calls") or [entry]
            for call, call_entry in enumerate(per_call):
                for base in ("input", "output"):
                    if f"{base}_scale" not in call_entry:
                        continue
                    key = self._key(base, call)
                    params = QParams.from_dict(call_entry, base)
                    self.params[layer.name][key] = params
                    if params.min is not None:
                        observer = state.observers[key] = self.make_observer(layer, key)
                        observer.set_range(params.min, params.max)
        for key, entry in (calibration.get(GRAPH_KEY) or {}).items():
            params = QParams.from_dict(entry, "output")
            self.graph_params[key] = params
            if params.min is not None and not entry.get("fixed") and not entry.get("shared_from"):
                observer = self.graph_observers[key] = self.make_observer(self.graph_slot, key)
                observer.set_range(params.min, params.max)
        self.state_changed()

    def export_model(self, model_path: str | os.PathLike, calibration_path: str | os.PathLike | None = None,
                     onnx_path: str | os.PathLike | None = None, input_shape: Any = None,
                     device: Any = None, dummy_input: Any = None) -> dict[str, dict[str, Any]]:
        """Write the float weights (loadable into the original model class), the calibration
        (``calibration_path``; ``.json`` is written as JSON, anything else with the framework's
        safe format) and an ONNX file with QuantizeLinear / DequantizeLinear nodes (``onnx_path``, traced on
        ``dummy_input``, else a float input of ``input_shape``, else the quantizer's own ``dummy_input``). Returns
        the calibration dict. All files are written to temporary names and renamed only when every one is written:
        on any error no destination is created or changed.

        Under ``torch.distributed`` call it on every rank: each returns the calibration (the same on every
        rank, since observers reduce their statistics over the ranks), only the main process writes files.
        """
        self._require_wrapped("export_model")
        example = onnx_example(self, onnx_path, dummy_input, input_shape)
        if onnx_path is not None:
            require("onnxscript", "export_model(onnx_path=...)")  # before any file is written
        calibration = self.calibration()
        if not distributed.is_main_process():  # under torch.distributed only rank 0 writes (every rank returns
            return calibration                 # the same calibration: observers reduce over the ranks)
        write_all([(onnx_path, lambda tmp: self.backend.export_onnx(self, tmp, example, device)),
                   (model_path, lambda tmp: self.backend.save_weights(self.model, self.layers, tmp)),
                   (calibration_path, lambda tmp: save_calibration(calibration, tmp, self.backend))])
        return calibration


__all__ = ["LayerQuant", "Quantizer", "differentiable", "load_calibration", "save_calibration", "traceable"]
