"""Plain-text summaries of the files slimkit writes: masks, ONNX models and TFLite flatbuffers.

:func:`describe_file` picks the reader from the file's extension (``.pth``/``.pt``/``.npz`` masks,
``.onnx``, ``.tflite``) and returns lines of text; the ``slimkit inspect`` command prints them.
TFLite files are read with the ``tflite`` package (no TensorFlow needed), ONNX files with ``onnx``.

Example:

>>> import os, tempfile, torch
>>> from slimkit.analysis.inspect import describe_file
>>> path = os.path.join(tempfile.mkdtemp(), 'mask.pth')
>>> torch.save({'fc': {'weight': torch.tensor([[1.0, 0.0], [0.0, 0.0]]), 'bias': None}}, path)
>>> print("\\n".join(describe_file(path)[1:]))
layer  weight shape  sparsity  zero/total
fc     (2, 2)        0.7500    3/4
total                0.7500    3/4
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from slimkit.errors import SlimkitError
from slimkit.utils.optional import require


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _values(array: Any, limit: int = 4) -> str:
    flat = np.asarray(array).reshape(-1)
    text = ", ".join(f"{v:.6g}" if np.issubdtype(flat.dtype, np.floating) else str(int(v)) for v in flat[:limit])
    if flat.size == 1:
        return text
    return f"[{text}{', ...' if flat.size > limit else ''}] ({flat.size} values)" if flat.size > limit else f"[{text}]"


# --------------------------------------------------------------------------- masks

def describe_masks(path: str) -> list[str]:
    """Per-layer weight-mask sparsity of a mask file (``export_model(mask_path=...)``)."""
    from slimkit.masks import load_masks

    masks = load_masks(path)
    rows = [("layer", "weight shape", "sparsity", "zero/total")]
    zeros = total = 0
    for name, entry in masks.items():
        mask = entry["weight"]
        array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        layer_zeros = int((array == 0).sum())
        zeros, total = zeros + layer_zeros, total + array.size
        rows.append((name, str(tuple(array.shape)), f"{layer_zeros / max(array.size, 1):.4f}",
                     f"{layer_zeros}/{array.size}"))
    rows.append(("total", "", f"{zeros / max(total, 1):.4f}", f"{zeros}/{total}"))
    return [f"mask file {os.path.basename(path)}: {len(masks)} layers"] + _table(rows)


# --------------------------------------------------------------------------- ONNX

def _onnx_dtype(elem_type: int) -> str:
    onnx = require("onnx", "Inspecting an ONNX file")

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001 - unusual types (bfloat16, float8) have no numpy name
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _onnx_shape(value: Any) -> str:
    dims = value.type.tensor_type.shape.dim
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"


def describe_onnx(path: str) -> list[str]:
    """Ops, inputs / outputs / initializers with dtypes, and QDQ scales and zero points of an ONNX file."""
    onnx = require("onnx", "Inspecting an ONNX file")
    numpy_helper = onnx.numpy_helper

    try:
        model = onnx.load(path)
    except Exception as error:  # noqa: BLE001
        raise SlimkitError(f"Could not read {path!r} as an ONNX model: {error}") from None
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attribute.t)
    opset = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    lines = [f"onnx model {os.path.basename(path)}: opset {opset}; producer "
             f"{model.producer_name or '?'} {model.producer_version}".rstrip()]
    lines.append(f"inputs ({len(graph.input)}):")
    lines += [f"  {v.name}: {_onnx_dtype(v.type.tensor_type.elem_type)} {_onnx_shape(v)}" for v in graph.input]
    lines.append(f"outputs ({len(graph.output)}):")
    lines += [f"  {v.name}: {_onnx_dtype(v.type.tensor_type.elem_type)} {_onnx_shape(v)}" for v in graph.output]
    counts = Counter(node.op_type for node in graph.node)
    lines.append(f"ops ({len(graph.node)} nodes):")
    lines += [f"  {op}: {n}" for op, n in sorted(counts.items())]
    lines.append(f"initializers ({len(graph.initializer)}):")
    lines += [f"  {i.name}: {_onnx_dtype(i.data_type)} {list(i.dims)}" for i in graph.initializer]
    qdq = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if qdq:
        lines.append(f"quantization ({len(qdq)} QDQ nodes):")
        for node in qdq:
            scale = constants.get(node.input[1]) if len(node.input) > 1 else None
            zero = constants.get(node.input[2]) if len(node.input) > 2 else None
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            text = f"  {node.op_type} {node.input[0]} -> {node.output[0]}: scale "
            text += _values(scale) if scale is not None else f"<{node.input[1]}>"
            if zero is not None:
                text += f", zero_point {_values(zero)} ({zero.dtype.name})"
            if axis is not None and scale is not None and np.asarray(scale).size > 1:
                text += f", axis {axis}"
            lines.append(text)
    else:
        lines.append("quantization: none (no QuantizeLinear / DequantizeLinear nodes)")
    return lines


# --------------------------------------------------------------------------- TFLite

def _enum_names(enum: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum).items() if not name.startswith("_") and isinstance(value, int)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def describe_tflite(path: str) -> list[str]:
    """Operators, tensors (dtype, shape) and quantization parameters of a ``.tflite`` flatbuffer.

    Raises:
        FileFormatError: the file is not a valid TFLite file (see :mod:`slimkit.utils.tflite_file`).
    """
    import tflite

    from slimkit.utils.tflite_file import load_tflite

    model = load_tflite(path)  # checked: every accessor below stays inside the file
    subgraph_count = model.SubgraphsLength()
    ops = _enum_names(tflite.BuiltinOperator)
    types = _enum_names(tflite.TensorType)
    codes = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = ops.get(builtin, f"BUILTIN_{builtin}")
        codes.append(f"CUSTOM({_text(code.CustomCode())})" if name == "CUSTOM" else name)
    lines = [f"tflite model {os.path.basename(path)}: schema version {model.Version()}, {subgraph_count} subgraph"
             f"{'s' if subgraph_count != 1 else ''}"]
    for s in range(subgraph_count):
        graph = model.Subgraphs(s)
        lines.append(f"subgraph {s} {_text(graph.Name())!r}: inputs {graph.InputsAsNumpy().tolist()}, "
                     f"outputs {graph.OutputsAsNumpy().tolist()}")
        lines.append(f"operators ({graph.OperatorsLength()}):")
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            lines.append(f"  {o}: {codes[op.OpcodeIndex()]} inputs {op.InputsAsNumpy().tolist()} "
                         f"outputs {op.OutputsAsNumpy().tolist()}")
        lines.append(f"tensors ({graph.TensorsLength()}):")
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            shape = tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else []
            text = f"  {t}: {_text(tensor.Name())} {types.get(tensor.Type(), tensor.Type())} {shape}"
            quant = tensor.Quantization()
            if quant is not None and quant.ScaleLength():
                text += f" scale {_values(quant.ScaleAsNumpy())} zero_point {_values(quant.ZeroPointAsNumpy())}"
                if quant.ScaleLength() > 1:
                    text += f" axis {quant.QuantizedDimension()}"
            lines.append(text)
    return lines


READERS = {".pth": describe_masks, ".pt": describe_masks, ".npz": describe_masks,
           ".onnx": describe_onnx, ".tflite": describe_tflite}
"""File extension -> reader."""


def describe_file(path: str | os.PathLike) -> list[str]:
    """Lines describing ``path``, chosen by its extension (see :data:`READERS`).

    Raises:
        SlimkitError: the file is missing, or its extension has no reader.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SlimkitError(f"Expected an existing file. Received: path={path!r}")
    extension = os.path.splitext(path)[1].lower()
    if extension not in READERS:
        raise SlimkitError(f"Expected a file ending in one of {sorted(READERS)}. Received: path={path!r}")
    return READERS[extension](path)
