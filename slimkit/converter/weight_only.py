"""Weight-only quantized Linear layers (:class:`~slimkit.algorithms.quantization.WeightOnlyQuantizer`) in the file:
their integer codes, not float weights.

Each such layer's FULLY_CONNECTED reads its weight from a DEQUANTIZE of a constant holding the codes: INT4 (packed
two per byte, low nibble first, as LiteRT reads them) up to 4 bits, INT8 above, with one scale and zero point per
row of the constant. Per output channel (``group_size=-1``) the constant is the ``(out, in)`` weight itself;
blockwise, it is the weight viewed as ``(out * groups, group_size)``, one row per block, and a RESHAPE gives the FC
its ``(out, in)`` weight. After AWQ a DIV by the per-input-feature factors follows, as in PyTorch. LiteRT runs the
DEQUANTIZE once (its input is constant) and the FC in float, so the file's weights are the PyTorch model's grid
values exactly and its outputs equal the model's to float rounding.

Asymmetric codes (unsigned) are stored shifted by ``-2**(storage bits - 1)`` with their zero points shifted alike:
``(q - z) * s`` is unchanged.

LiteRT's own ``BlockwiseQuantization`` of FULLY_CONNECTED weights is not used: its kernels (XNNPACK and the builtin
one) quantize the activations to int8 on the fly and read float16 scales (XNNPACK rounds them to bfloat16), so its
outputs are about 0.5 % away from the weight-only model's, not within float rounding (measured with LiteRT 2.3).

Example:

>>> import os, tempfile, torch
>>> from slimkit.algorithms.quantization import WeightOnlyQuantizer
>>> from slimkit.converter import TFLiteConverter
>>> from slimkit.converter.weight_only import file_weights
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4))
>>> model = WeightOnlyQuantizer(model, [{'op_types': ['Linear'], 'quant_bits': 4, 'group_size': 4}]).compress()
>>> path = os.path.join(tempfile.mkdtemp(), 'int4.tflite')
>>> TFLiteConverter(model, torch.randn(1, 8), path).convert()
>>> weights = file_weights(path)
>>> list(weights), weights['0.weight_codes'].shape
(['0.weight_codes'], (8, 4))
>>> bool((weights['0.weight_codes'].reshape(4, 8) == model[0].quantized_weight().numpy()).all())
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tflite

from slimkit.converter.ir import Graph, Op, QuantParams, Tensor
from slimkit.errors import UnsupportedOpError


@dataclass(frozen=True, eq=False)
class WeightCodes:
    """A weight-only layer's weight as the file stores it.

    Args:
        layer: the layer's qualified name.
        codes: integer codes, ``(out, in)``.
        scale, zero: per-group scale (float32) and zero point, ``(out, groups)``.
        bits: the grid's bit width (2-8).
        signed: symmetric (signed) codes; else unsigned codes with zero points.
        weight: the float weight the PyTorch layer computes with, ``(out, in)`` (the grid values, divided by
            ``input_scale`` if any).
        input_scale: AWQ's per-input-feature factors, ``(in,)``, or None.
    """

    layer: str
    codes: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    bits: int
    signed: bool
    weight: np.ndarray
    input_scale: np.ndarray | None = None

    @property
    def storage(self) -> str:
        """The file's code type: ``'int4'`` up to 4 bits, ``'int8'`` above."""
        return "int4" if self.bits <= 4 else "int8"

    def stored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(codes, scale, zero)`` as the file holds them: one row per block, ``(out * groups, block)``, with a
        scale and a zero point per row; unsigned codes shifted into the signed storage range."""
        out, groups = self.scale.shape
        shift = 0 if self.signed else 2 ** ((4 if self.storage == "int4" else 8) - 1)
        codes = self.codes.astype(np.int16).reshape(out * groups, -1) - shift
        return codes.astype(np.int8), self.scale.reshape(-1).astype(np.float32), self.zero.reshape(-1) - shift


def layer_codes(model, path: str) -> WeightCodes | None:
    """The :class:`WeightCodes` of the weight-only wrapper at module ``path`` of ``model``, or whose wrapped layer is
    there (a layer with its own forward, such as GPT-2's ``Conv1D``, is traced as ``<wrapper>.module``); None when
    neither."""
    from slimkit.frameworks.torch.weight_only import WeightOnlyWrapper

    head, _, last = path.rpartition(".")
    found = [m for m in (_submodule(model, path), _submodule(model, head) if last == "module" else None)
             if isinstance(m, WeightOnlyWrapper)]
    if not found:
        return None
    wrapper = found[0]

    def array(t):
        return t.detach().cpu().numpy()

    return WeightCodes(wrapper.layer_name, array(wrapper.weight_codes), array(wrapper.weight_scale).astype(np.float32),
                       array(wrapper.weight_zero_point).round().astype(np.int64), wrapper.grid.bits,
                       wrapper.grid.symmetric, array(wrapper.quantized_weight()).astype(np.float32),
                       None if wrapper.input_scale is None else array(wrapper.input_scale).astype(np.float32))


def _submodule(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Signed 4-bit values (any shape, in [-8, 7]) packed two per byte in row-major order, the first of each pair in
    the low nibble (an odd count ends with a half-filled byte)."""
    flat = values.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` signed 4-bit values of ``packed`` (:func:`pack_int4`'s inverse), as int8."""
    pairs = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:count].astype(np.int8)
    return np.where(pairs > 7, pairs - 16, pairs).astype(np.int8)


def _weight_ops(w: Tensor, codes: WeightCodes) -> tuple[list[Op], Tensor]:
    """The ops computing the FC weight ``w`` from its codes, and the float ``(out, in)`` tensor they give."""
    values, scale, zero = codes.stored()
    data = pack_int4(values) if codes.storage == "int4" else values
    stored = Tensor(f"{codes.layer}.weight_codes", values.shape, codes.storage, data=data,
                    quant=QuantParams(scale, zero, 0))
    weight = Tensor(f"{w.name}_dequantized", values.shape)
    ops = [Op("DEQUANTIZE", [stored], [weight])]
    if values.shape != w.shape:  # blockwise: one row per block
        reshaped = Tensor(f"{w.name}_blocks", w.shape)
        shape = Tensor(f"{w.name}_shape", (2,), "int32", data=np.asarray(w.shape, np.int32))
        ops.append(Op("RESHAPE", [weight, shape], [reshaped], {"NewShape": list(w.shape)}))
        weight = reshaped
    if codes.input_scale is not None:
        factors = Tensor(f"{w.name}_input_scale", (1, w.shape[1]), data=codes.input_scale.reshape(1, -1))
        divided = Tensor(f"{w.name}_divided", w.shape)
        ops.append(Op("DIV", [weight, factors], [divided], {"FusedActivationFunction": 0}))
        weight = divided
    return ops, weight


def encode_weight_only(graph: Graph) -> int:
    """Every FULLY_CONNECTED weight tagged with :class:`WeightCodes` (by the linear converters) becomes the DEQUANTIZE
    of its codes (see the module docstring); returns how many weights were encoded.

    Raises:
        UnsupportedOpError: a tagged weight no longer equals the layer's grid values (another rewrite, such as a
            BatchNorm folded into the Linear, changed it), naming the layers; the graph is left as it was.
    """
    tagged = [(op, op.inputs[1]) for op in graph.ops if op.code == "FULLY_CONNECTED" and len(op.inputs) > 1
              and op.inputs[1] is not None and op.inputs[1].weight_codes is not None]
    changed = sorted({w.weight_codes.layer for _, w in tagged
                      if w.data_scale is not None or not np.array_equal(w.data, w.weight_codes.weight)})
    if changed:
        raise UnsupportedOpError(
            f"Weight-only layers {changed}: the file's FULLY_CONNECTED weight is no longer the layer's grid values "
            "(a following BatchNorm or another rewrite was folded into it), so their codes cannot be written. "
            "Expected weight-only Linear layers whose output is used as computed: fold that op into the float "
            "layer before quantizing it, or exclude these layers from the WeightOnlyQuantizer.")
    replacement: dict[int, tuple[list[Op], Tensor]] = {}
    ops: list[Op] = []
    for op in graph.ops:
        w = op.inputs[1] if op.code == "FULLY_CONNECTED" and len(op.inputs) > 1 else None
        if w is not None and w.weight_codes is not None:
            if id(w) not in replacement:
                replacement[id(w)] = _weight_ops(w, w.weight_codes)
                ops.extend(replacement[id(w)][0])
            op.inputs[1] = replacement[id(w)][1]
        ops.append(op)
    graph.ops[:] = ops
    return len(replacement)


_CODE_TYPES = (tflite.TensorType.INT8, tflite.TensorType.INT4)


def file_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The float weights the file at ``path`` computes with its DEQUANTIZE ops from INT4 / INT8 constants with
    per-row scales and zero points, ``(q - z) * s`` in float32, by the constant's tensor name (the weight-only layers
    of a converted model: ``'<layer>.weight_codes'``), in the constant's shape (``(out * groups, block)``).

    Raises:
        FileFormatError: the file is not a valid TFLite file.
    """
    from slimkit.utils.tflite_file import load_tflite

    model = load_tflite(path)
    graph = model.Subgraphs(0)
    codes_of_ops = (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))
    dequantize = {i for i, code in enumerate(codes_of_ops)
                  if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == tflite.BuiltinOperator.DEQUANTIZE}
    weights: dict[str, np.ndarray] = {}
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        if op.OpcodeIndex() not in dequantize:
            continue
        t = graph.Tensors(int(op.InputsAsNumpy()[0]))
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        quant = t.Quantization()
        if t.Type() not in _CODE_TYPES or isinstance(data, int) or quant is None or quant.ScaleLength() == 0:
            continue
        shape = tuple(int(d) for d in t.ShapeAsNumpy())
        count = int(np.prod(shape))
        codes = unpack_int4(data, count) if t.Type() == tflite.TensorType.INT4 else data[:count].view(np.int8)
        axis = quant.QuantizedDimension()
        broadcast = [1] * len(shape)
        broadcast[axis] = -1
        scale = quant.ScaleAsNumpy().astype(np.float32).reshape(broadcast)
        zero = quant.ZeroPointAsNumpy().astype(np.float32).reshape(broadcast)
        weights[t.Name().decode()] = (codes.reshape(shape).astype(np.float32) - zero) * scale
    return weights
