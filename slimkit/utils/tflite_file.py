"""Opening ``.tflite`` files safely: every reader in slimkit goes through here.

:func:`check_tflite` walks the whole flatbuffer against the TFLite schema with
:func:`slimkit.utils.flatbuffer_check.check_flatbuffer` (every table, vector and string inside the file)
and then checks the indices a reader follows (operator codes, tensors, buffers, subgraphs) are in range.
A file that fails raises :class:`slimkit.FileFormatError` reading
``not a valid TFLite file: <path> (<what>)``. :func:`load_tflite` returns the checked file as a
``tflite.Model``; :func:`tflite_interpreter` builds a LiteRT interpreter on it (through
:func:`slimkit.utils.litert.interpreter`) and names the file in LiteRT's own errors too.

Example:

>>> import os, tempfile
>>> from slimkit.utils.tflite_file import load_tflite
>>> path = os.path.join(tempfile.mkdtemp(), 'broken.tflite')
>>> _ = open(path, 'wb').write(b'\\x1c\\x00\\x00\\x00TFL3' + bytes(8))
>>> load_tflite(path)
Traceback (most recent call last):
...
slimkit.errors.FileFormatError: not a valid TFLite file: ...broken.tflite (Model: table Model at byte 28 runs past \
the end (16 bytes))
"""

from __future__ import annotations

import os
from typing import Any

import tflite

from slimkit.errors import FileFormatError
from slimkit.utils.flatbuffer_check import (
    BOOL,
    F32,
    I8,
    I32,
    I64,
    STRING,
    U8,
    U32,
    U64,
    FlatbufferError,
    Table,
    UnionValue,
    Vector,
    check_flatbuffer,
)
from slimkit.utils.litert import LITERT, LITERT_FEATURE, interpreter
from slimkit.utils.optional import require

# The TFLite schema (tensorflow/compiler/mlir/lite/schema/schema.fbs), every field in slot order.
BUFFER = Table("Buffer", {"data": Vector(U8), "offset": U64, "size": U64})
METADATA = Table("Metadata", {"name": STRING, "buffer": U32})
TENSOR_MAP = Table("TensorMap", {"name": STRING, "tensor_index": U32})
SIGNATURE_DEF = Table("SignatureDef", {"inputs": Vector(TENSOR_MAP), "outputs": Vector(TENSOR_MAP),
                                       "signature_key": STRING, "deprecated_tag": None, "subgraph_index": U32})
QUANTIZATION = Table("QuantizationParameters", {
    "min": Vector(F32), "max": Vector(F32), "scale": Vector(F32), "zero_point": Vector(I64), "details_type": U8,
    "details": UnionValue("details_type"), "quantized_dimension": I32})
DIMENSION_METADATA = Table("DimensionMetadata", {
    "format": I8, "dense_size": I32, "array_segments_type": U8, "array_segments": UnionValue("array_segments_type"),
    "array_indices_type": U8, "array_indices": UnionValue("array_indices_type")})
SPARSITY = Table("SparsityParameters", {"traversal_order": Vector(I32), "block_map": Vector(I32),
                                        "dim_metadata": Vector(DIMENSION_METADATA)})
VARIANT_SUB_TYPE = Table("VariantSubType", {"shape": Vector(I32), "type": I8, "has_rank": BOOL})
TENSOR = Table("Tensor", {
    "shape": Vector(I32), "type": I8, "buffer": U32, "name": STRING, "quantization": QUANTIZATION,
    "is_variable": BOOL, "sparsity": SPARSITY, "shape_signature": Vector(I32), "has_rank": BOOL,
    "variant_tensors": Vector(VARIANT_SUB_TYPE)})
OPERATOR = Table("Operator", {
    "opcode_index": U32, "inputs": Vector(I32), "outputs": Vector(I32), "builtin_options_type": U8,
    "builtin_options": UnionValue("builtin_options_type"), "custom_options": Vector(U8), "custom_options_format": I8,
    "mutating_variable_inputs": Vector(BOOL), "intermediates": Vector(I32), "large_custom_options_offset": U64,
    "large_custom_options_size": U64, "builtin_options_2_type": U8,
    "builtin_options_2": UnionValue("builtin_options_2_type"), "debug_metadata_index": I32})
OPERATOR_CODE = Table("OperatorCode", {"deprecated_builtin_code": I8, "custom_code": STRING, "version": I32,
                                       "builtin_code": I32})
SUBGRAPH = Table("SubGraph", {"tensors": Vector(TENSOR), "inputs": Vector(I32), "outputs": Vector(I32),
                              "operators": Vector(OPERATOR), "name": STRING, "debug_metadata_index": I32})
MODEL = Table("Model", {
    "version": U32, "operator_codes": Vector(OPERATOR_CODE), "subgraphs": Vector(SUBGRAPH), "description": STRING,
    "buffers": Vector(BUFFER), "metadata_buffer": Vector(I32), "metadata": Vector(METADATA),
    "signature_defs": Vector(SIGNATURE_DEF)})
IDENTIFIER = b"TFL3"


def _in_range(values: Any, count: int, what: str, optional: bool = False) -> None:
    low = -1 if optional else 0
    for value in values:
        if not low <= int(value) < count:
            raise FlatbufferError(f"{what} {int(value)} is out of range ({count} available)")


def _check_indices(model: tflite.Model, size: int) -> None:
    """The references a reader follows point at things that exist."""
    codes, buffers, subgraphs = model.OperatorCodesLength(), model.BuffersLength(), model.SubgraphsLength()
    if subgraphs == 0:
        raise FlatbufferError("the model has no subgraph")
    for b in range(buffers):
        buffer = model.Buffers(b)
        if buffer.Offset() > 1 and buffer.Offset() + buffer.Size() > size:
            raise FlatbufferError(f"buffers[{b}] refers to bytes {buffer.Offset()}..{buffer.Offset() + buffer.Size()} "
                                  f"past the end of the file ({size} bytes)")
    for s in range(subgraphs):
        graph = model.Subgraphs(s)
        tensors = graph.TensorsLength()
        where = f"subgraphs[{s}]"
        _in_range(graph.InputsAsNumpy() if graph.InputsLength() else (), tensors, f"{where}.inputs: tensor")
        _in_range(graph.OutputsAsNumpy() if graph.OutputsLength() else (), tensors, f"{where}.outputs: tensor")
        for t in range(tensors):
            _in_range((graph.Tensors(t).Buffer(),), buffers, f"{where}.tensors[{t}].buffer")
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            _in_range((op.OpcodeIndex(),), codes, f"{where}.operators[{o}].opcode_index")
            for name in ("Inputs", "Outputs", "Intermediates"):
                if getattr(op, f"{name}Length")():
                    _in_range(getattr(op, f"{name}AsNumpy")(), tensors, f"{where}.operators[{o}].{name.lower()}: "
                              "tensor", optional=True)
    for m in range(model.MetadataLength()):
        _in_range((model.Metadata(m).Buffer(),), buffers, f"metadata[{m}].buffer")
    for d in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(d)
        index = signature.SubgraphIndex()
        _in_range((index,), subgraphs, f"signature_defs[{d}].subgraph_index")
        tensors = model.Subgraphs(index).TensorsLength()
        for kind in ("Inputs", "Outputs"):
            for i in range(getattr(signature, f"{kind}Length")()):
                _in_range((getattr(signature, kind)(i).TensorIndex(),), tensors,
                          f"signature_defs[{d}].{kind.lower()}[{i}].tensor_index")


def check_tflite(data: bytes, where: str) -> tflite.Model:
    """Check ``data`` is a whole, well-formed TFLite flatbuffer; returns it as a ``tflite.Model``.

    Raises:
        FileFormatError: ``not a valid TFLite file: <where> (<what is wrong, and where in the file>)``.
    """
    try:
        check_flatbuffer(data, MODEL, IDENTIFIER)
        model = tflite.Model.GetRootAsModel(data, 0)
        _check_indices(model, len(data))
    except FlatbufferError as error:
        raise FileFormatError(f"not a valid TFLite file: {where} ({error})") from None
    return model


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise FileFormatError(f"Expected a readable .tflite file. Received: path={path!r} ({error.strerror})") from None


def read_tflite(path: str | os.PathLike) -> bytes:
    """The bytes of the ``.tflite`` file ``path``, checked with :func:`check_tflite`.

    Raises:
        FileFormatError: the file cannot be read, or is not a valid TFLite file.
    """
    path = os.fspath(path)
    data = _read(path)
    check_tflite(data, path)
    return data


def load_tflite(path: str | os.PathLike) -> tflite.Model:
    """The file ``path``, checked with :func:`check_tflite`, as a ``tflite.Model`` (the ``tflite`` package's
    reader; its accessors then stay inside the file)."""
    path = os.fspath(path)
    return check_tflite(_read(path), path)


def _check_shapes(data: bytes, where: str) -> None:
    """Build the graph with LiteRT's own kernels (no delegate), which check every op, and compare the shapes
    they compute with the shapes the file declares. XNNPACK trusts the declared shapes and sizes its buffers
    by them, so a file that declares a larger tensor than its ops produce is refused before it gets there."""
    import numpy as np

    builtin = require(LITERT, LITERT_FEATURE).OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    probe = _litert(where, model_content=data, experimental_op_resolver_type=builtin)
    graph = tflite.Model.GetRootAs(data, 0).Subgraphs(0)
    for detail in probe.get_tensor_details():
        if detail["index"] >= graph.TensorsLength():  # scratch tensors LiteRT's kernels add
            continue
        tensor = graph.Tensors(detail["index"])
        declared = tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else []
        computed = detail["shape"].tolist()
        if np.prod(declared, dtype=np.float64) > np.prod(computed, dtype=np.float64):
            raise FileFormatError(f"not a valid TFLite file: {where} (tensor {detail['index']} {detail['name']!r} "
                                  f"is declared with shape {declared}, but its op computes {computed})")


def tflite_interpreter(path_or_bytes: str | os.PathLike | bytes, **kwargs: Any) -> Any:
    """A LiteRT ``Interpreter`` on a checked file (or flatbuffer bytes), tensors allocated.

    Besides :func:`check_tflite`, the graph is first built with LiteRT's builtin kernels (no delegate, little
    memory), and tensors whose declared shape is larger than the one their op computes are refused, so that a
    damaged file fails fast instead of making the XNNPACK delegate allocate for its declared sizes.
    ``kwargs`` go to ``Interpreter`` (``num_threads``, ``experimental_op_resolver_type``, ...).

    Raises:
        FileFormatError: the file is not a valid TFLite file, or LiteRT refuses it (its message is kept).
        MissingDependencyError: LiteRT (the ``litert`` extra) is not installed.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        where, data = "the flatbuffer bytes given", bytes(path_or_bytes)
        check_tflite(data, where)
    else:
        where = os.fspath(path_or_bytes)
        data = read_tflite(where)
    _check_shapes(data, where)
    return _litert(where, model_content=data, **kwargs)


def _litert(where: str, **kwargs: Any) -> Any:
    """:func:`slimkit.utils.litert.interpreter` (the one place LiteRT interpreters are made), with LiteRT's
    refusals as :class:`FileFormatError` naming the file."""
    try:
        return interpreter(**kwargs)
    except (ValueError, RuntimeError) as error:
        raise FileFormatError(f"not a valid TFLite file: {where} (LiteRT: {str(error).strip()})") from None
