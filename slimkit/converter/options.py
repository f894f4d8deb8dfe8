"""Converter options, in one object (TinyNeuralNetwork's names where they exist).

Example:

>>> from slimkit.converter.options import ConverterOptions
>>> ConverterOptions(nchw_transpose=False).transposes_input(0, 4)
False
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from slimkit.errors import ConfigError


@dataclass(frozen=True)
class ConverterOptions:
    """Options of :class:`~slimkit.converter.TFLiteConverter`.

    Args:
        nchw_transpose: as TinyNN: True (default) transposes 4-D model inputs and outputs to NHWC,
            so the file takes and returns channels-last tensors and needs no TRANSPOSE inside;
            False keeps every input and output in PyTorch's layout (TRANSPOSE ops at the edges).
        input_transpose: per-input override of the above (None: True for 4-D tensors when
            ``nchw_transpose``).
        output_transpose: per-output override, as ``input_transpose``.
        group_conv_rewrite: write grouped convolutions as SPLIT + CONV_2D + CONCATENATION
            (for runtimes without grouped CONV_2D).
        unroll_rnn: unroll LSTM into per-step ops instead of UNIDIRECTIONAL_SEQUENCE_LSTM /
            BIDIRECTIONAL_SEQUENCE_LSTM (GRU is always unrolled).
        hybrid: dynamic-range quantization: int8 weights (per channel) for FULLY_CONNECTED,
            CONV_2D, DEPTHWISE_CONV_2D and LSTM, float activations.
        hybrid_conv: include convolutions in ``hybrid`` (TinyNN's ``hybrid_conv``).
        quantize_io: for quantized models, integer inputs/outputs: True or ``'int8'`` removes the
            leading QUANTIZE and trailing DEQUANTIZE (TinyNN's ``fuse_quant_dequant``); ``'uint8'``
            takes and returns uint8 (zero point + 128) through requantizing QUANTIZE ops.
        quantized_input_stats: ``[(mean, std), ...]`` per input: that input becomes int8 (uint8 when
            mean > 127, or ``quantize_io='uint8'``) with ``real = (q - mean) / std``: the input
            normalisation is folded into the model's first QUANTIZE (a DEQUANTIZE for float models).
        separated_rnn_gate_calc: with ``unroll_rnn``, one FULLY_CONNECTED per gate instead of one per
            projection followed by a SPLIT (TinyNN's option).
        map_bilstm_to_lstm: write a bidirectional LSTM as two UNIDIRECTIONAL_SEQUENCE_LSTM (the backward one
            between REVERSE_V2 ops) and a CONCATENATION instead of BIDIRECTIONAL_SEQUENCE_LSTM (TinyNN's option).
        missing_outputs_as_constants: outputs that do not depend on the inputs are written as constant
            tensors (True, slimkit's default); False leaves them out of the file (TinyNN's default).
        optimize: 0 = each op lowered on its own (no fusion; quantized models keep QUANTIZE / DEQUANTIZE
            around float kernels); 1 = peephole fusion (BN folding, fused activations, SAME padding,
            transpose-free reshapes) and int8 kernels; 2 (default) = also graph-wide RESHAPE collapsing
            and RESHAPE-into-reduction folding.
        dynamic_batch: write the batch (axis 0 of every input) as -1 (``shape_signature``), so the file runs any
            batch after ``interpreter.resize_tensor_input``; RESHAPEs that carry the batch get -1 there. The model is
            lowered a second time at one more row to find where the batch is held (about doubles conversion time);
            an op that bakes the batch size in any other way is an ``UnsupportedOpError`` naming it.
        sparse_weights: store each float32 or int8 weight of CONV_2D and DEPTHWISE_CONV_2D, and each float32 weight
            of FULLY_CONNECTED, with TFLite's sparsity encoding (CSR over its longest axis) behind a DENSIFY op, as
            TensorFlow's converter does under ``Optimize.EXPERIMENTAL_SPARSITY``, wherever that makes the file smaller
            (a nonzero costs its value plus a 1-byte index, 2 bytes past 255: float32 weights above about 20 % zeros,
            int8 ones above about 50 %). Outputs equal the dense file's exactly; LiteRT expands the weights once, on
            the first invoke (:mod:`slimkit.converter.sparse`). int8 FULLY_CONNECTED weights stay dense: XNNPACK
            fails to prepare one fed by a DENSIFY. Hybrid (``hybrid=True``) and blockwise weights stay dense too.
            Off by default: a file without DENSIFY runs on every TFLite runtime.
        validate: before the file takes its name, LiteRT loads it and runs it once on zeros in a separate process
            (:mod:`slimkit.converter.validate`), so a file the interpreter rejects or would crash on is never
            written (a ``SlimkitError`` names the path and the reason); an int8 layer XNNPACK would refuse to prepare
            (:mod:`slimkit.converter.limits`) is named before the file is written. False skips both checks.
    """

    nchw_transpose: bool = True
    input_transpose: bool | Sequence[bool] | None = None
    output_transpose: bool | Sequence[bool] | None = None
    group_conv_rewrite: bool = False
    unroll_rnn: bool = False
    hybrid: bool = False
    hybrid_conv: bool = True
    quantize_io: bool | str = False
    quantized_input_stats: Sequence[tuple[float, float]] | None = None
    optimize: int = 2
    dynamic_batch: bool = False
    validate: bool = True
    separated_rnn_gate_calc: bool = False
    map_bilstm_to_lstm: bool = False
    missing_outputs_as_constants: bool = True
    sparse_weights: bool = False

    def __post_init__(self):
        if self.quantize_io not in (False, True, "int8", "uint8"):
            raise ConfigError("Expected quantize_io in (False, True, 'int8', 'uint8'). "
                              f"Received: quantize_io={self.quantize_io!r}")
        if not isinstance(self.sparse_weights, bool):
            raise ConfigError("Expected sparse_weights=True or False. "
                              f"Received: sparse_weights={self.sparse_weights!r}")
        if self.optimize not in (0, 1, 2):
            raise ConfigError(f"Expected optimize in (0, 1, 2). Received: optimize={self.optimize!r}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> ConverterOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigError(f"Expected converter options among {sorted(names)}. Received: unknown={unknown}")
        return cls(**kwargs)

    def _pick(self, value, index: int, rank: int) -> bool:
        if not self.nchw_transpose:
            return False
        if isinstance(value, (list, tuple)):
            value = value[index] if index < len(value) else None
        if value is None:
            return rank == 4
        return bool(value) and rank >= 3

    def transposes_input(self, index: int, rank: int) -> bool:
        return self._pick(self.input_transpose, index, rank)

    def transposes_output(self, index: int, rank: int) -> bool:
        return self._pick(self.output_transpose, index, rank)
