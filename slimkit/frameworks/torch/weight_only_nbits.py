"""onnxruntime's ``MatMulNBits`` (domain ``com.microsoft``) for a weight-only quantized Linear: the layer's
MatMul / Gemm replaced by one node that reads the packed codes, a scale per block and packed zero points.

``MatMulNBits`` computes ``A @ ((q - zero) * scale)^T`` for unsigned codes ``q`` of ``bits`` bits (2, 4 or 8 in
onnxruntime's CPU kernel) stored row by row (the weight's ``(out, in)`` layout), ``8 / bits`` codes per byte, the
lowest bits first; blocks of ``block_size`` input features (a power of two, at least 16) each carry a scale and a
zero point. slimkit's symmetric codes are signed: they are stored shifted by ``2**(bits-1)`` with that zero point,
so the dequantized values are the same grid values. A group that is not a power of two (or a whole row) is split
into equal power-of-two blocks sharing its scale. Activations stay float (``accuracy_level=0``).

Example:

>>> import numpy as np
>>> from slimkit.frameworks.torch.weight_only_nbits import pack
>>> pack(np.array([[1, 2, 15, 0]]), 4).tolist()        # two codes per byte, the first in the low nibble
[[33, 15]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.errors import UnsupportedOpError

DOMAIN = "com.microsoft"
BITS = (2, 4, 8)
"""Bit widths onnxruntime's MatMulNBits kernel runs."""


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit ``values`` (rows, count) packed along each row into uint8, ``8 // bits`` per byte, the
    first in the lowest bits; a row's last byte is padded with zeros."""
    per_byte = 8 // bits
    rows, count = values.shape
    padded = np.zeros((rows, -(-count // per_byte) * per_byte), dtype=np.uint8)
    padded[:, :count] = values
    lanes = padded.reshape(rows, -1, per_byte).astype(np.uint16)
    shifts = np.arange(per_byte, dtype=np.uint16) * bits
    return (lanes << shifts).sum(axis=-1).astype(np.uint8)


def block_size(name: str, grid: Any, columns: int) -> int:
    """The largest power of two of at least 16 that divides the layer's group (a whole row for ``group_size=-1``).

    Raises:
        UnsupportedOpError: bits that MatMulNBits does not run, or a group with no such block.
    """
    group = columns if grid.group_size == -1 else grid.group_size
    if grid.bits not in BITS:
        raise UnsupportedOpError(f"ONNX MatMulNBits: layer {name!r} is quantized to {grid.bits} bits. Expected "
                                 f"one of {list(BITS)} (what onnxruntime's kernel runs). Received: bits={grid.bits}; "
                                 f"export it with onnx_format='DequantizeLinear' instead.")
    size = group & -group  # the largest power of two dividing the group
    if size < 16:
        raise UnsupportedOpError(f"ONNX MatMulNBits: layer {name!r} has groups of {group} input features. Expected "
                                 f"a group divisible by a power of two of at least 16 (MatMulNBits' block_size). "
                                 f"Received: group_size={grid.group_size}; export it with "
                                 f"onnx_format='DequantizeLinear' instead.")
    return size


def nbits_initializers(name: str, wrapper: Any) -> tuple[list[Any], dict[str, Any]]:
    """The packed codes, scales and zero points of ``wrapper`` (a WeightOnlyWrapper) and the node's attributes."""
    from onnx import numpy_helper

    grid = wrapper.grid
    codes = wrapper.weight_codes.detach().cpu().numpy().astype(np.int16)
    rows, columns = codes.shape
    size = block_size(name, grid, columns)
    repeat = (columns if grid.group_size == -1 else grid.group_size) // size
    shift = 2 ** (grid.bits - 1) if grid.symmetric else 0
    scale = np.repeat(wrapper.weight_scale.detach().cpu().numpy().astype(np.float32), repeat, axis=1)
    zero = np.repeat(wrapper.weight_zero_point.detach().cpu().numpy().round().astype(np.int16) + shift, repeat,
                     axis=1)
    blocks = columns // size
    initializers = [
        numpy_helper.from_array(pack(codes + shift, grid.bits).reshape(rows, blocks, size * grid.bits // 8),
                                f"{name}.weight_packed"),
        numpy_helper.from_array(scale.reshape(-1), f"{name}.weight_scale"),
        numpy_helper.from_array(pack(zero, grid.bits).reshape(-1), f"{name}.weight_zero_point"),
    ]
    attributes = {"K": columns, "N": rows, "bits": grid.bits, "block_size": size, "accuracy_level": 0}
    return initializers, attributes


def _matmul_uses(graph: Any, weight: str, transposed: bool) -> list[tuple[Any, Any | None]]:
    """``(consumer, transpose)`` for each MatMul / Gemm that multiplies by ``weight`` as an ``(in, out)`` right
    operand, directly or through a Transpose; raises if the weight has any other use."""
    def users(tensor: str) -> list[Any]:
        return [node for node in graph.node if tensor in node.input]

    def attribute(node: Any, key: str, default: Any) -> Any:
        from onnx import helper

        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == key), default)

    def direct(node: Any) -> bool:  # x @ W^T as a Gemm, or x @ W of an (in, out) weight as a MatMul
        if node.op_type == "Gemm":
            return node.input[0] != weight and node.input[1] == weight and attribute(node, "transA", 0) == 0 \
                and attribute(node, "transB", 0) == (0 if transposed else 1) \
                and attribute(node, "alpha", 1.0) == 1 and attribute(node, "beta", 1.0) == 1
        return node.op_type == "MatMul" and transposed and node.input[0] != weight and node.input[1] == weight

    found, other = [], []
    for node in users(weight):
        if direct(node):
            found.append((node, None))
        elif node.op_type == "Transpose" and not transposed and list(attribute(node, "perm", [])) == [1, 0]:
            consumers = users(node.output[0])
            if not consumers or any(c.op_type != "MatMul" or c.input[1] != node.output[0] for c in consumers):
                other.append(node)
            found.extend((consumer, node) for consumer in consumers)
        else:
            other.append(node)
    if other or not found:
        raise UnsupportedOpError(f"ONNX MatMulNBits: weight {weight!r} is used by "
                                 f"{[n.op_type for n in other] or 'no MatMul'} in the exported graph. Expected it to "
                                 f"feed only MatMul / Gemm as the right operand (a Linear layer's product); export "
                                 f"this model with onnx_format='DequantizeLinear' instead.")
    return found


def rewrite_matmul_nbits(graph: Any, name: str, wrapper: Any) -> None:
    """Replace the products by layer ``name``'s weight initializer in ``graph`` with MatMulNBits nodes (after AWQ,
    the input divided by ``input_scale`` first); the float weight and its Transposes leave the graph."""
    from onnx import helper, numpy_helper

    weight = f"{name}.weight"
    uses = _matmul_uses(graph, weight, wrapper.transposed)
    initializers, attributes = nbits_initializers(name, wrapper)
    graph.initializer.remove(next(init for init in graph.initializer if init.name == weight))
    graph.initializer.extend(initializers)
    if wrapper.input_scale is not None:
        graph.initializer.append(numpy_helper.from_array(
            wrapper.input_scale.detach().cpu().numpy().astype(np.float32), f"{name}.input_scale"))
    packed = [init.name for init in initializers]
    for index, (node, transpose) in enumerate(uses):
        position = list(graph.node).index(node)
        activation, replacement = node.input[0], []
        if wrapper.input_scale is not None:
            scaled = f"{name}.input_scaled_{index}"
            replacement.append(helper.make_node("Div", [activation, f"{name}.input_scale"], [scaled],
                                                name=f"{name}.input_scale_{index}"))
            activation = scaled
        bias = [node.input[2]] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else []
        inputs = [activation, *packed, *([""] + bias if bias else [])]
        replacement.append(helper.make_node("MatMulNBits", inputs, list(node.output),
                                            name=f"{name}.matmul_nbits_{index}", domain=DOMAIN, **attributes))
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(position + offset, new)
        if transpose is not None and transpose in graph.node \
                and not any(transpose.output[0] in other.input for other in graph.node):
            graph.node.remove(transpose)
