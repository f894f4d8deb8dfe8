"""Flatbuffer writer: IR graph -> ``.tflite`` bytes with the ``tflite`` schema's builder functions.

Constant payloads are copied into the builder's byte array in one slice each (16-byte aligned),
never element by element, and the builder is sized once for the whole model.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import tflite

from slimkit.converter.ir import Graph, Tensor
from slimkit.converter.versions import op_version

OPTIONS = {
    "CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions", "ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions",
    "DIV": "DivOptions", "CONCATENATION": "ConcatenationOptions", "AVERAGE_POOL_2D": "Pool2DOptions",
    "MAX_POOL_2D": "Pool2DOptions", "RESHAPE": "ReshapeOptions", "SOFTMAX": "SoftmaxOptions",
    "LOG_SOFTMAX": "LogSoftmaxOptions", "MEAN": "ReducerOptions", "SUM": "ReducerOptions",
    "REDUCE_MAX": "ReducerOptions", "REDUCE_MIN": "ReducerOptions", "TRANSPOSE": "TransposeOptions",
    "PAD": "PadOptions", "PADV2": "PadV2Options", "MIRROR_PAD": "MirrorPadOptions",
    "STRIDED_SLICE": "StridedSliceOptions", "SLICE": "SliceOptions", "SPLIT": "SplitOptions",
    "SPLIT_V": "SplitVOptions", "UNPACK": "UnpackOptions", "GATHER": "GatherOptions",
    "RESIZE_BILINEAR": "ResizeBilinearOptions", "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions",
    "LEAKY_RELU": "LeakyReluOptions", "GELU": "GeluOptions", "BATCH_MATMUL": "BatchMatMulOptions",
    "TRANSPOSE_CONV": "TransposeConvOptions", "MAXIMUM": "MaximumMinimumOptions",
    "MINIMUM": "MaximumMinimumOptions", "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTMOptions",
    "BIDIRECTIONAL_SEQUENCE_LSTM": "BidirectionalSequenceLSTMOptions",
    "HARD_SWISH": "HardSwishOptions", "POW": "PowOptions", "EXP": "ExpOptions", "NEG": "NegOptions",
    "ABS": "AbsOptions", "DEQUANTIZE": "DequantizeOptions", "QUANTIZE": "QuantizeOptions",
    "PACK": "PackOptions", "CAST": "CastOptions", "BROADCAST_TO": "BroadcastToOptions", "TILE": "TileOptions",
    "SELECT_V2": "SelectV2Options", "GREATER": "GreaterOptions", "GREATER_EQUAL": "GreaterEqualOptions",
    "LESS": "LessOptions", "LESS_EQUAL": "LessEqualOptions", "EQUAL": "EqualOptions", "NOT_EQUAL": "NotEqualOptions",
    "COS": "CosOptions", "ARG_MAX": "ArgMaxOptions", "ARG_MIN": "ArgMinOptions",
    "CUMSUM": "CumsumOptions", "REVERSE_V2": "ReverseV2Options", "TOPK_V2": "TopKV2Options",
    "FLOOR_DIV": "FloorDivOptions", "FLOOR_MOD": "FloorModOptions", "LOGICAL_AND": "LogicalAndOptions",
    "LOGICAL_OR": "LogicalOrOptions", "LOGICAL_NOT": "LogicalNotOptions", "BITWISE_XOR": "BitwiseXorOptions",
    "GATHER_ND": "GatherNdOptions", "SCATTER_ND": "ScatterNdOptions", "CONV_3D": "Conv3DOptions",
    "CONV_3D_TRANSPOSE": "Conv3DOptions", "REDUCE_PROD": "ReducerOptions", "SIGN": "SignOptions",
    "SHAPE": "ShapeOptions",
}

TENSOR_TYPES = {"float32": 0, "float16": 1, "int32": 2, "uint8": 3, "int64": 4, "bool": 6, "int16": 7, "int8": 9,
                "int4": 17}  # int4 payloads are packed two per byte (slimkit.converter.weight_only.pack_int4)
_OPS = tflite.BuiltinOperator
_OPTION_TYPES = tflite.BuiltinOptions


def _root(t: Tensor) -> Tensor:
    while t.base is not None:
        t = t.base
    return t


def fill(dest: np.ndarray, t: Tensor) -> None:
    """Write the constant's final values (made contiguous, pending scale applied) into ``dest``, one pass."""
    data = t.data
    dest = dest.reshape(data.shape)
    if t.data_scale is None:
        np.copyto(dest, data)
    else:
        scale, axis = t.data_scale
        shape = [1] * data.ndim
        shape[axis] = -1
        np.multiply(data, scale.reshape(shape), out=dest)


def _bytes_vector(builder: flatbuffers.Builder, t: Tensor, regions: list, alignment: int = 16) -> int:
    """A ubyte vector for the constant's bytes. Only the space is reserved here (the builder's memory
    there is never touched); :class:`Serialized` streams the values into the file."""
    n = t.data.nbytes
    builder.StartVector(1, n, alignment)
    builder.head = builder.head - n
    regions.append((builder.head, t))
    return builder.EndVector()


class Serialized:
    """A built model: the flatbuffer with reserved holes for constant payloads, filled on output."""

    def __init__(self, builder: flatbuffers.Builder, regions: list):
        self.bytes = builder.Bytes
        self.head = builder.Head()
        self.regions = sorted(regions, key=lambda r: r[0])
        self.size = len(self.bytes) - self.head

    def write_to(self, f) -> None:
        """Stream the file: metadata slices from the builder, payloads through one reused scratch buffer."""
        largest = max((t.data.nbytes for _, t in self.regions), default=0)
        scratch = np.empty(largest, np.uint8)
        cursor = self.head
        for start, t in self.regions:
            f.write(self.bytes[cursor:start])
            n = t.data.nbytes
            if t.data_scale is None and t.data.flags.c_contiguous:
                f.write(t.data.reshape(-1).view(np.uint8).data)  # already in file order: no copy
            else:
                fill(scratch[:n].view(t.data.dtype), t)
                f.write(memoryview(scratch)[:n])
            cursor = start + n
        f.write(self.bytes[cursor:])

    def tobytes(self) -> bytes:
        out = bytearray(self.bytes[self.head:])
        for start, t in self.regions:
            fill(np.frombuffer(out, dtype=t.data.dtype, count=t.data.size, offset=start - self.head), t)
        return bytes(out)


def _builder(size: int) -> flatbuffers.Builder:
    """A builder over ``size`` uninitialised bytes (bytearray(size) would zero-fill them first)."""
    builder = flatbuffers.Builder(1024)
    builder.Bytes = memoryview(np.empty(size, np.uint8))
    builder.head = size
    return builder


def _int_vector(builder, values, dtype=np.int32) -> int:
    return builder.CreateNumpyVector(np.asarray(values, dtype=dtype).reshape(-1))


def tensor_table(graph: Graph) -> tuple[list[Tensor], list, list[int], list[int]]:
    """The file's tensors in the order they are written, with each op's ``(inputs, outputs)`` indices and the
    subgraph's input and output indices (-1: an omitted optional input). Two graphs lowered from the same model
    list corresponding tensors at the same index."""
    tensors: list[Tensor] = []
    index: dict[int, int] = {}

    def tensor_index(t):
        if t is None:
            return -1
        t = _root(t)
        i = index.get(id(t))
        if i is None:
            i = index[id(t)] = len(tensors)
            tensors.append(t)
        return i

    for t in graph.inputs:
        tensor_index(t)
    op_io = [([tensor_index(t) for t in op.inputs], [tensor_index(t) for t in op.outputs]) for op in graph.ops]
    outputs = [tensor_index(t) for t in graph.outputs]
    inputs = [tensor_index(t) for t in graph.inputs]
    return tensors, op_io, inputs, outputs


def serialize(graph: Graph, description: str = "slimkit") -> Serialized:
    """Build the ``.tflite`` flatbuffer of ``graph``; ``.write_to(f)`` streams it, ``.tobytes()`` returns it."""
    tensors, op_io, inputs, outputs = tensor_table(graph)

    payload = sum(t.data.nbytes for t in tensors if t.data is not None)
    quant = sum(16 * t.quant.scale.size + 64 for t in tensors if t.quant is not None)  # scales + int64 zero points
    quant += sum(t.sparsity.nbytes + 64 * len(t.shape) for t in tensors if t.sparsity is not None)
    builder = _builder(payload + quant + 128 * len(tensors) + 512 * len(graph.ops) + 65536)

    # buffers: 0 is the empty sentinel; each constant gets its own
    buffer_of = {}
    buffer_offsets = []
    regions: list = []
    tflite.BufferStart(builder)
    buffer_offsets.append(tflite.BufferEnd(builder))
    for i, t in enumerate(tensors):
        if t.data is None:
            continue
        vec = _bytes_vector(builder, t, regions)
        tflite.BufferStart(builder)
        tflite.BufferAddData(builder, vec)
        buffer_of[i] = len(buffer_offsets)
        buffer_offsets.append(tflite.BufferEnd(builder))

    tensor_offsets = []
    shared_vectors: dict = {}
    for i, t in enumerate(tensors):
        name = builder.CreateString(t.name)
        shape = _int_vector(builder, t.physical_shape)
        signature = _int_vector(builder, t.shape_signature) if t.shape_signature is not None else None
        q = _quantization(builder, t.quant, shared_vectors) if t.quant is not None else None
        sparsity = _sparsity(builder, t.sparsity) if t.sparsity is not None else None
        tflite.TensorStart(builder)
        tflite.TensorAddShape(builder, shape)
        if signature is not None:
            tflite.TensorAddShapeSignature(builder, signature)
        tflite.TensorAddType(builder, TENSOR_TYPES[t.dtype])
        tflite.TensorAddBuffer(builder, buffer_of.get(i, 0))
        tflite.TensorAddName(builder, name)
        if q is not None:
            tflite.TensorAddQuantization(builder, q)
        if sparsity is not None:
            tflite.TensorAddSparsity(builder, sparsity)
        if t.is_variable:
            tflite.TensorAddIsVariable(builder, True)
        tensor_offsets.append(tflite.TensorEnd(builder))

    codes: dict[tuple[str, int], int] = {}
    op_offsets = []
    for op, (ins, outs) in zip(graph.ops, op_io):
        op.version = max(op.version, op_version(op))
        key = (op.code, op.version)
        if key not in codes:
            codes[key] = len(codes)
        opts = _options(builder, op)
        in_vec = _int_vector(builder, ins)
        out_vec = _int_vector(builder, outs)
        tflite.OperatorStart(builder)
        tflite.OperatorAddOpcodeIndex(builder, codes[key])
        tflite.OperatorAddInputs(builder, in_vec)
        tflite.OperatorAddOutputs(builder, out_vec)
        if opts is not None:
            tflite.OperatorAddBuiltinOptionsType(builder, opts[0])
            tflite.OperatorAddBuiltinOptions(builder, opts[1])
        op_offsets.append(tflite.OperatorEnd(builder))

    code_offsets = []
    for code, version in codes:
        value = getattr(_OPS, code)
        tflite.OperatorCodeStart(builder)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(builder, min(value, 127))
        tflite.OperatorCodeAddBuiltinCode(builder, value)
        tflite.OperatorCodeAddVersion(builder, version)
        code_offsets.append(tflite.OperatorCodeEnd(builder))

    sg_tensors = _offset_vector(builder, tflite.SubGraphStartTensorsVector, tensor_offsets)
    sg_ops = _offset_vector(builder, tflite.SubGraphStartOperatorsVector, op_offsets)
    sg_in = _int_vector(builder, inputs)
    sg_out = _int_vector(builder, outputs)
    sg_name = builder.CreateString("main")
    tflite.SubGraphStart(builder)
    tflite.SubGraphAddTensors(builder, sg_tensors)
    tflite.SubGraphAddInputs(builder, sg_in)
    tflite.SubGraphAddOutputs(builder, sg_out)
    tflite.SubGraphAddOperators(builder, sg_ops)
    tflite.SubGraphAddName(builder, sg_name)
    subgraph = tflite.SubGraphEnd(builder)

    subgraphs = _offset_vector(builder, tflite.ModelStartSubgraphsVector, [subgraph])
    signatures = _offset_vector(builder, tflite.ModelStartSignatureDefsVector, [_signature(builder, graph, inputs,
                                                                                          outputs)])
    op_codes = _offset_vector(builder, tflite.ModelStartOperatorCodesVector, code_offsets)
    buffers = _offset_vector(builder, tflite.ModelStartBuffersVector, buffer_offsets)
    desc = builder.CreateString(description)
    tflite.ModelStart(builder)
    tflite.ModelAddVersion(builder, 3)
    tflite.ModelAddOperatorCodes(builder, op_codes)
    tflite.ModelAddSubgraphs(builder, subgraphs)
    tflite.ModelAddDescription(builder, desc)
    tflite.ModelAddBuffers(builder, buffers)
    tflite.ModelAddSignatureDefs(builder, signatures)
    model = tflite.ModelEnd(builder)
    builder.Finish(model, file_identifier=b"TFL3")
    return Serialized(builder, regions)


SIGNATURE_KEY = "serving_default"


def signature_names(graph: Graph) -> tuple[list[str], list[str]]:
    """The ``serving_default`` signature's input names (the model's argument names, as captured) and output names
    (``output_0``, ``output_1``, ...)."""
    return [t.name for t in graph.inputs], [f"output_{i}" for i in range(len(graph.outputs))]


def _signature(builder, graph: Graph, inputs: list[int], outputs: list[int]) -> int:
    """The ``serving_default`` SignatureDef of the single subgraph (what ``Interpreter.get_signature_runner()``
    reads)."""
    in_names, out_names = signature_names(graph)

    def tensor_maps(names, indices, start):
        maps = []
        for name, index in zip(names, indices):
            name_offset = builder.CreateString(name)
            tflite.TensorMapStart(builder)
            tflite.TensorMapAddName(builder, name_offset)
            tflite.TensorMapAddTensorIndex(builder, index)
            maps.append(tflite.TensorMapEnd(builder))
        return _offset_vector(builder, start, maps)

    in_maps = tensor_maps(in_names, inputs, tflite.SignatureDefStartInputsVector)
    out_maps = tensor_maps(out_names, outputs, tflite.SignatureDefStartOutputsVector)
    key = builder.CreateString(SIGNATURE_KEY)
    tflite.SignatureDefStart(builder)
    tflite.SignatureDefAddInputs(builder, in_maps)
    tflite.SignatureDefAddOutputs(builder, out_maps)
    tflite.SignatureDefAddSignatureKey(builder, key)
    tflite.SignatureDefAddSubgraphIndex(builder, 0)
    return tflite.SignatureDefEnd(builder)


def _offset_vector(builder, start, offsets) -> int:
    start(builder, len(offsets))
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return builder.EndVector()


def _quantization(builder, q, shared: dict | None = None) -> int:
    """A QuantizationParameters table; equal scale / zero-point vectors are written once and shared
    (per-channel zero points are all zeros: one vector per channel count, not one per tensor)."""
    shared = {} if shared is None else shared

    def vector(values):
        key = (values.dtype.str, values.tobytes())
        if key not in shared:
            shared[key] = builder.CreateNumpyVector(values)
        return shared[key]

    scale = vector(np.asarray(q.scale, np.float32).reshape(-1))
    zero = vector(np.asarray(q.zero_point, np.int64).reshape(-1))
    tflite.QuantizationParametersStart(builder)
    tflite.QuantizationParametersAddScale(builder, scale)
    tflite.QuantizationParametersAddZeroPoint(builder, zero)
    tflite.QuantizationParametersAddQuantizedDimension(builder, int(q.quantized_dimension))
    return tflite.QuantizationParametersEnd(builder)


def _sparsity(builder, s) -> int:
    from slimkit.converter.sparse import write_sparsity  # sparse.py builds on this module

    return write_sparsity(builder, s)


def _options(builder, op):
    cls = OPTIONS.get(op.code)
    if cls is None:
        return None
    vectors = {k: _int_vector(builder, v) for k, v in op.options.items() if isinstance(v, (list, tuple))}
    getattr(tflite, f"{cls}Start")(builder)
    for key, value in op.options.items():
        adder = getattr(tflite, f"{cls}Add{key}")
        adder(builder, vectors.get(key, value))
    return getattr(_OPTION_TYPES, cls), getattr(tflite, f"{cls}End")(builder)
