"""Sparse weights: constants stored with TFLite's sparsity encoding and expanded by a DENSIFY op.

This is the layout TensorFlow's converter writes under ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` for weights
without a block pattern: the constant keeps its dense shape, its buffer holds only the nonzero values, and its
``SparsityParameters`` say where they go. ``traversal_order`` visits the longest axis last (the other axes in
their order), every axis visited before it is ``DENSE`` (``dense_size`` = its length) and the longest is
``SPARSE_CSR``, whose ``array_segments`` (one entry per row of the other axes, plus one) and ``array_indices``
(the position of each value along the longest axis) are exactly CSR over
``weight.transpose(traversal_order).reshape(-1, longest)``: the values are stored in that order. Putting the
longest axis last keeps the rows few (a conv weight ``[out, kh, kw, in]`` with 8 input channels is CSR over
``out``, not over ``in``). Index vectors take the smallest type that holds
them (uint8, uint16, else int32). A ``DENSIFY`` op turns the constant back into the dense weight the consuming
op reads; LiteRT runs it once, on the first invoke.

Example:

>>> import numpy as np
>>> from slimkit.converter.sparse import csr_layout
>>> values, segments, indices = csr_layout(np.array([[0., 2., 0.], [3., 0., 4.]], np.float32))
>>> values.tolist(), segments.tolist(), indices.tolist()  # CSR over the longest axis (here the last)
([2.0, 3.0, 4.0], [0, 1, 3], [1, 0, 2])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tflite

from slimkit.converter.ir import Graph, Op, Tensor
from slimkit.converter.writer import _offset_vector, _root

# op -> (weight input, weight types a DENSIFY may feed it). An int8 FULLY_CONNECTED is left out: XNNPACK (LiteRT's
# default delegate) fails to prepare one whose weight comes from a DENSIFY, while it takes the int8 convolutions
WEIGHT_INPUTS = {"FULLY_CONNECTED": (1, ("float32",)), "CONV_2D": (1, ("float32", "int8")),
                 "DEPTHWISE_CONV_2D": (1, ("float32", "int8"))}
# flatbuffer bytes a sparse weight adds besides its vectors (SparsityParameters, DENSIFY op, one more tensor)
_OVERHEAD = 256
_INDEX_TYPES = ((np.uint8, "Uint8Vector"), (np.uint16, "Uint16Vector"), (np.int32, "Int32Vector"))


@dataclass(eq=False)
class Sparsity:
    """A constant's ``SparsityParameters``: its dense shape, the traversal order, the CSR row starts (segments) and
    the positions along the last-traversed axis (indices), as :func:`sparse_constant` builds them.

    Example:

    >>> import numpy as np
    >>> from slimkit.converter.ir import Tensor
    >>> from slimkit.converter.sparse import sparse_constant
    >>> w = np.zeros((300, 2), np.float32); w[7, 1] = 2.0
    >>> s = sparse_constant(Tensor('w', w.shape, data=w)).sparsity
    >>> s.order, s.segments.tolist(), s.indices.tolist(), s.nbytes
    ((1, 0), [0, 0, 1], [7], 4)
    """

    dense_shape: tuple[int, ...]
    order: tuple[int, ...]
    segments: np.ndarray
    indices: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.segments.nbytes + self.indices.nbytes


def _smallest_index(values: np.ndarray) -> np.ndarray:
    top = int(values.max(initial=0))
    for dtype, _ in _INDEX_TYPES:
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    raise AssertionError("int32 holds every index of a TFLite tensor")


def traversal_order(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes in storage order: the longest (the first of equals) last, the others in their own order."""
    longest = int(np.argmax(shape))
    return tuple(a for a in range(len(shape)) if a != longest) + (longest,)


def csr_layout(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, segments, indices)``: CSR of ``dense.transpose(traversal_order(dense.shape))`` with its last axis
    as columns, indices in their smallest unsigned type."""
    dense = dense.transpose(traversal_order(dense.shape))
    rows = dense.reshape(-1, dense.shape[-1])
    nonzero = rows != 0
    values = rows[nonzero]
    segments = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))])
    indices = np.nonzero(nonzero)[1]
    return values, _smallest_index(segments), _smallest_index(indices)


def sparse_constant(t: Tensor) -> Tensor | None:
    """The sparse copy of constant ``t`` (its nonzero values and :class:`Sparsity`), or None where the encoding
    would not make the file smaller (or ``t`` has no nonzero value: LiteRT reads an empty buffer as no data)."""
    dense = t.values()
    if dense.ndim < 2 or not dense.any():
        return None
    values, segments, indices = csr_layout(dense)
    sparsity = Sparsity(dense.shape, traversal_order(dense.shape), segments, indices)
    if values.nbytes + sparsity.nbytes + _OVERHEAD >= dense.nbytes:
        return None
    return Tensor(f"{t.name}_sparse", dense.shape, t.dtype, data=values, quant=t.quant, sparsity=sparsity)


def encode_sparse_weights(graph: Graph) -> int:
    """Store every weight of a CONV_2D / DEPTHWISE_CONV_2D (float32 or int8) and FULLY_CONNECTED (float32) whose
    activations share its type (hybrid and blockwise weights stay dense) sparsely behind a DENSIFY op, where that
    makes the file smaller. The weight tensor becomes the DENSIFY's output, so every reader of it (a weight shared
    by two ops) reads the dense copy. Returns how many weights were encoded."""
    densify: list[Op] = []
    for op in graph.ops:
        slot, types = WEIGHT_INPUTS.get(op.code, (None, ()))
        if slot is None or len(op.inputs) <= slot or op.inputs[slot] is None or op.inputs[0] is None:
            continue
        weight = _root(op.inputs[slot])
        if not weight.is_const or weight.dtype not in types or weight.dtype != op.inputs[0].dtype:
            continue  # (a weight read twice is no longer constant the second time: it is the DENSIFY's output)
        sparse = sparse_constant(weight)
        if sparse is None:
            continue
        weight.shape, weight.perm = sparse.shape, None  # the dense output, in the stored (physical) layout
        weight.data, weight.data_scale = None, None
        densify.append(Op("DENSIFY", [sparse], [weight], source=op.source))
        weight.producer = densify[-1]
    graph.ops = densify + graph.ops
    return len(densify)


def _index_vector(builder, values: np.ndarray) -> tuple[int, int]:
    """A SparseIndexVector union member for ``values`` (its type picked by :func:`_smallest_index`)."""
    name = dict(_INDEX_TYPES)[values.dtype.type]
    vec = builder.CreateNumpyVector(values)
    getattr(tflite, f"{name}Start")(builder)
    getattr(tflite, f"{name}AddValues")(builder, vec)
    return getattr(tflite.SparseIndexVector, name), getattr(tflite, f"{name}End")(builder)


def write_sparsity(builder, s: Sparsity) -> int:
    """The ``SparsityParameters`` table of ``s`` (see the module docstring for the layout)."""
    dims = []
    for size in [s.dense_shape[a] for a in s.order[:-1]]:
        tflite.DimensionMetadataStart(builder)
        tflite.DimensionMetadataAddFormat(builder, tflite.DimensionType.DENSE)
        tflite.DimensionMetadataAddDenseSize(builder, int(size))
        dims.append(tflite.DimensionMetadataEnd(builder))
    seg_type, segments = _index_vector(builder, s.segments)
    idx_type, indices = _index_vector(builder, s.indices)
    tflite.DimensionMetadataStart(builder)
    tflite.DimensionMetadataAddFormat(builder, tflite.DimensionType.SPARSE_CSR)
    tflite.DimensionMetadataAddArraySegmentsType(builder, seg_type)
    tflite.DimensionMetadataAddArraySegments(builder, segments)
    tflite.DimensionMetadataAddArrayIndicesType(builder, idx_type)
    tflite.DimensionMetadataAddArrayIndices(builder, indices)
    dims.append(tflite.DimensionMetadataEnd(builder))

    order = builder.CreateNumpyVector(np.asarray(s.order, np.int32))
    dim_vec = _offset_vector(builder, tflite.SparsityParametersStartDimMetadataVector, dims)
    tflite.SparsityParametersStart(builder)
    tflite.SparsityParametersAddTraversalOrder(builder, order)
    tflite.SparsityParametersAddDimMetadata(builder, dim_vec)
    return tflite.SparsityParametersEnd(builder)
