"""WeightOnlyQuantizer: Linear weights on a group-wise 2-8 bit grid (RTN, GPTQ or AWQ), activations float.

Example:

>>> import torch
>>> from slimkit.algorithms.quantization import WeightOnlyQuantizer
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> batches = [torch.randn(16, 8) for _ in range(4)]
>>> q = WeightOnlyQuantizer(model, [{'op_types': ['Linear'], 'quant_bits': 4, 'group_size': 4}],
...                         algorithm='gptq')
>>> model = q.calibrate(batches).compress()
>>> codes = model[0].weight_codes
>>> codes.dtype, int(codes.min()) >= -8, int(codes.max()) <= 7, tuple(model[0].weight_scale.shape)
(torch.int8, True, True, (4, 2))
>>> model = q.unwrap_model()                  # the float layers back, exactly as they were
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from schema import And, Or

from slimkit.algorithms.linear_calibration import LinearCalibration
from slimkit.compression import Compressor, Layer
from slimkit.compression.config import POSITIVE_INT, ConfigKey
from slimkit.errors import CompositionError, ConfigError

_BITS = And(int, lambda v: not isinstance(v, bool) and 2 <= v <= 8)


def _rtn(quantizer: WeightOnlyQuantizer, layer: Layer, grid: Any) -> tuple:
    weight = quantizer.matrix(layer)
    scale, zero = grid.params(weight)
    return grid.codes(weight, scale, zero), scale, zero, None


def _gptq(quantizer: WeightOnlyQuantizer, layer: Layer, grid: Any) -> tuple:
    from slimkit.algorithms.quantization.gptq import gptq

    stats = quantizer.input_statistics(layer, layer.module)
    return (*gptq(quantizer.matrix(layer), stats.hessian(), grid, quantizer.dampening, quantizer.act_order),
            None)


def _awq(quantizer: WeightOnlyQuantizer, layer: Layer, grid: Any) -> tuple:
    from slimkit.algorithms.quantization.awq import awq

    stats = quantizer.input_statistics(layer, layer.module)
    return awq(quantizer.matrix(layer), stats.mean_abs(), stats.hessian(), grid)


ALGORITHMS: dict[str, tuple[Callable[..., tuple], bool]] = {"rtn": (_rtn, False), "gptq": (_gptq, True),
                                                            "awq": (_awq, True)}
"""Weight-only algorithms by name: (solver, needs calibration batches)."""


class WeightOnlyQuantizer(LinearCalibration, Compressor):
    """Quantize the weights of Linear layers group-wise to ``quant_bits``; activations stay float.

    Args:
        model: a ``torch.nn.Module``.
        config_list: dicts with ``op_types`` / ``op_names`` and ``quant_bits`` (2-8, default 4), ``group_size``
            (input features per group, default 128; -1: one group per output channel; must divide every
            selected layer's input features) and ``symmetric`` (default True: signed codes, zero point 0;
            False: unsigned codes with a zero point per group).
        algorithm: ``'rtn'`` (round to nearest), ``'gptq'`` (error feedback through the inverse Hessian of the
            layer's calibration inputs) or ``'awq'`` (activation-aware per-input-feature scaling).
        dampening: GPTQ's diagonal dampening, a fraction of the Hessian's mean diagonal.
        act_order: GPTQ visits input features in order of decreasing Hessian diagonal, with group parameters
            from the weights before any update (static groups: the file format is unchanged). Default True.

    ``calibrate(batches)`` gives GPTQ / AWQ their data. ``compress()`` processes the layers one by one in model
    order, each calibrated on the model with the layers before it already quantized, and replaces each layer
    with a :class:`~slimkit.frameworks.torch.weight_only.WeightOnlyWrapper` holding integer codes, scales and
    zero points; ``unwrap_model()`` restores the float layers.

    Raises:
        ConfigError: an unknown algorithm, bits outside 2-8, a ``group_size`` that does not divide a layer's
            input features, a selected layer that is not a Linear, calibration batches the model cannot run or
            of the wrong width (naming the layer; the model is left as it was).
    """

    config_keys: ClassVar[Mapping[str, ConfigKey]] = {
        "quant_bits": ConfigKey(_BITS, "an integer bit width from 2 to 8", 4),
        "group_size": ConfigKey(Or(And(int, lambda v: v == -1), POSITIVE_INT), "-1 or a positive integer", 128),
        "symmetric": ConfigKey(bool, "True or False", True),
    }
    default_op_role: ClassVar[str] = "linear"
    weight_use: ClassVar[str] = "quantizes it"

    def __init__(self, model: Any, config_list: list[dict], algorithm: str = "rtn", *, dampening: float = 0.01,
                 act_order: bool = True):
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"WeightOnlyQuantizer: Expected algorithm to be one of {sorted(ALGORITHMS)}. "
                              f"Received: algorithm={algorithm!r}")
        self.algorithm = algorithm
        self.dampening = dampening
        self.act_order = act_order
        super().__init__(model, config_list)

    def validate_layer(self, layer: Layer) -> None:
        self.check_linear(layer)
        group_size, features = layer.config.group_size, self.matrix(layer).shape[1]
        if group_size != -1 and features % group_size:
            raise ConfigError(f"WeightOnlyQuantizer: config_list[{layer.config.index}]['group_size'] does not "
                              f"divide the {features} input features of layer {layer.name!r}. Expected a divisor "
                              f"of {features} or -1. Received: group_size={group_size}")

    def grid(self, layer: Layer) -> Any:
        from slimkit.frameworks.torch.weight_grid import GroupGrid

        config = layer.config
        return GroupGrid(bits=config.quant_bits, group_size=config.group_size, symmetric=config.symmetric)

    def compress(self) -> Any:
        """Quantize every selected layer (in model order) and wrap it; returns the model."""
        if self.wrapped:
            return self.model
        solver, needs_batches = ALGORITHMS[self.algorithm]
        if needs_batches:
            self.require_batches()
        self.check_weights(self.layers)
        from slimkit.frameworks.torch.adapter import set_submodule, wrapper_at
        from slimkit.frameworks.torch.weight_only import WeightOnlyWrapper

        for layer in self.layers:  # before anything is wrapped: a wrapper would be replaced and its masks dropped
            wrapper = wrapper_at(self.model, layer.name)
            if wrapper is not None:
                raise CompositionError(
                    f"Layer {layer.name!r} is already wrapped ({type(wrapper).__name__}); WeightOnlyQuantizer would "
                    "replace that wrapper and drop what it applies (a pruner's masks). Expected plain layers: bake "
                    "the masks in first (pruner.export_model(...) and load the weights into a plain model, or "
                    f"unwrap_model() the other compressor), or exclude {layer.name!r}. The model is unchanged.")

        done: list[Layer] = []
        try:
            for layer in self.layers:
                grid = self.grid(layer)
                layer.wrapper = WeightOnlyWrapper(layer.module, layer.name, grid, *solver(self, layer, grid),
                                                  transposed=layer.out_axis == 1)
                set_submodule(self.model, layer.name, layer.wrapper)
                done.append(layer)
        except BaseException:
            self.adapter.unwrap(self.model, done)  # leave the model as it was
            raise
        self.wrapped = True
        return self.model

    def quantized_weights(self) -> dict[str, dict[str, Any]]:
        """``{layer_name: {'codes', 'scale', 'zero_point', 'input_scale', 'bits', 'group_size', 'symmetric'}}``:
        what an exporter writes (codes int8 / uint8 (out, in); scale / zero point (out, groups))."""
        self._require_wrapped("quantized_weights")
        return {layer.name: {"codes": layer.wrapper.weight_codes, "scale": layer.wrapper.weight_scale,
                             "zero_point": layer.wrapper.weight_zero_point, "input_scale": layer.wrapper.input_scale,
                             "bits": layer.wrapper.grid.bits, "group_size": layer.wrapper.grid.group_size,
                             "symmetric": layer.wrapper.grid.symmetric} for layer in self.layers}

    def export_model(self, model_path: str | os.PathLike, onnx_path: str | os.PathLike | None = None,
                     dummy_input: Any = None, onnx_format: str = "DequantizeLinear") -> None:
        """Write the weights as the grid values (``model_path``: a state dict that loads into the original model
        class) and, given ``onnx_path`` and ``dummy_input`` (a tensor or a tuple of inputs), an ONNX file storing
        each quantized weight's codes (opset 21; see :mod:`slimkit.frameworks.torch.weight_only_onnx`):
        ``onnx_format='DequantizeLinear'`` (default) as blocked DequantizeLinear, ``'MatMulNBits'`` as
        onnxruntime's com.microsoft MatMulNBits (2, 4 or 8 bits, groups divisible by a power of two >= 16).
        Files are written to temporary names and renamed.
        """
        self._require_wrapped("export_model")
        from slimkit.frameworks.torch.weight_only_onnx import check_format, export_weight_only_onnx, plain_copy

        check_format(onnx_format)
        if onnx_path is not None and dummy_input is None:
            raise ConfigError("WeightOnlyQuantizer.export_model: onnx_path needs an example input. Expected "
                              "dummy_input=<a tensor or a tuple of the model's inputs>. Received: dummy_input=None")
        import torch

        from slimkit.utils.files import atomic_path

        wrappers = {layer.name: layer.wrapper for layer in self.layers}
        if onnx_path is not None:
            export_weight_only_onnx(self.model, wrappers, os.fspath(onnx_path), dummy_input, onnx_format)
        with atomic_path(os.fspath(model_path)) as tmp:
            torch.save(plain_copy(self.model, wrappers).state_dict(), tmp)
