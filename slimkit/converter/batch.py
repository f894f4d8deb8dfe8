"""A dynamic batch (``ConverterOptions(dynamic_batch=True)``): find every place the file holds the batch size.

The model is lowered twice, at ``n`` and ``n + 1`` rows (the example's rows repeated; ``n`` is the example's batch,
at least 2: at batch 1 the layout may order a size-1 batch axis anywhere, which holds for batch 1 only). The two
graphs list the same ops and tensors in the same order; whatever differs depends on the batch:

- an activation's shape: the axes that differ are written as -1 in its ``shape_signature``, and its ``shape`` is
  the size at the example's batch (sizes are linear in the batch);
- the new shape of a RESHAPE (its shape tensor and ``NewShape`` option): the one entry that differs becomes -1,
  which TFLite infers from the input's size, exact for every batch;
- a constant expanded to the batch (its rows all equal: Hugging Face BERT's ``token_type_ids``, ViT's class token):
  one row of it where a broadcasting op reads it, broadcast to an activation's batch at run time where a
  CONCATENATION does;
- anything else (another constant, an op option, a state variable, a different graph): the batch cannot be
  written as a variable, so the node is named in an :class:`~slimkit.errors.UnsupportedOpError` before anything is
  written.

Example:

>>> import torch
>>> from slimkit.converter.batch import example_batch, with_rows
>>> inputs = (torch.zeros(1, 3), torch.zeros(1, 5, 2))
>>> example_batch(inputs), [tuple(t.shape) for t in with_rows(inputs, 3)]
(1, [(3, 3), (3, 5, 2)])
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from slimkit.converter.ir import Graph, Op, Tensor
from slimkit.converter.writer import tensor_table
from slimkit.errors import UnsupportedOpError

_FIX = ("Expected a model whose ops only carry the batch through their input shapes. Convert with "
        "dynamic_batch=False and an example of the batch you deploy, or rewrite the op without the batch size "
        "(x.flatten(1) instead of x.view(x.size(0) * k, -1), ...).")


def example_batch(inputs: tuple) -> int:
    """The batch of the example (axis 0 of every tensor input, one size for all)."""
    sizes = {t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0}
    if len(sizes) != 1 or any(isinstance(t, torch.Tensor) and t.dim() == 0 for t in inputs):
        raise UnsupportedOpError("dynamic_batch: expected every model input to hold the batch on axis 0, all of one "
                                 f"size. Received: input shapes={[tuple(getattr(t, 'shape', ())) for t in inputs]}")
    return sizes.pop()


def with_rows(inputs: tuple, rows: int) -> tuple:
    """The example inputs with ``rows`` rows on the batch axis (axis 0 of every tensor): their rows repeated."""
    def grow(t):
        index = torch.arange(rows) % t.shape[0]
        return t[index]
    return tuple(grow(t) if isinstance(t, torch.Tensor) else t for t in inputs)


def _where(op: Op | None, tensor: Tensor | None = None) -> str:
    what = f"{op.code} at {op.source or '<root>'}" if op is not None else "a model input or output"
    return what + (f" (tensor {tensor.name!r})" if tensor is not None else "")


def _one_entry(a: Any, b: Any) -> list[int] | None:
    """``a`` with -1 at the one position where it differs from ``b`` (None if not exactly one)."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape or -1 in a:
        return None
    differ = np.flatnonzero(a != b)
    if differ.size != 1:
        return None
    out = a.astype(np.int64)
    out[differ[0]] = -1
    return out.tolist()


def _reshape_shape(op: Op, other: Op, position: int, batch: int) -> list[Op] | None:
    """RESHAPE's new shape: the one entry that follows the batch becomes -1 (TFLite infers it)."""
    new_shape = _one_entry(op.inputs[position].data, other.inputs[position].data)
    if new_shape is None:
        return None
    op.inputs[position].data = np.asarray(new_shape, op.inputs[position].data.dtype)
    return []


def _full_extent(op: Op, other: Op, position: int) -> np.ndarray | None:
    """Axes where a slice's ``position`` input (end / size) differs between the graphs and covers the whole axis from
    0 with stride 1 in both (so it can be written as "to the end"); None if any differing axis does not."""
    ends = [o.inputs[position].data.reshape(-1) for o in (op, other)]
    if ends[0].shape != ends[1].shape:
        return None
    differ = np.flatnonzero(ends[0] != ends[1])
    for o, end in zip((op, other), ends):
        begin = o.inputs[1].data.reshape(-1)
        full = np.asarray(o.inputs[0].physical_shape)
        stride = o.inputs[3].data.reshape(-1) if o.code == "STRIDED_SLICE" else np.ones_like(begin)
        if not (np.all(begin[differ] == 0) and np.all(stride[differ] == 1) and np.all(end[differ] == full[differ])):
            return None
    return differ


def _strided_slice_end(op: Op, other: Op, position: int, batch: int) -> list[Op] | None:
    """STRIDED_SLICE's end: an axis sliced whole gets its ``end_mask`` bit."""
    axes = _full_extent(op, other, position)
    if axes is None or any(op.options.get("ShrinkAxisMask", 0) >> int(a) & 1 for a in axes):
        return None
    op.options["EndMask"] = int(op.options.get("EndMask", 0)) | sum(1 << int(a) for a in axes)
    return []


def _slice_size(op: Op, other: Op, position: int, batch: int) -> list[Op] | None:
    """SLICE's size: an axis sliced whole gets -1 ("to the end")."""
    axes = _full_extent(op, other, position)
    if axes is None:
        return None
    size = op.inputs[position].data.copy()
    size.reshape(-1)[axes] = -1
    op.inputs[position].data = size
    return []


def batch_rows(t: Tensor, p: Tensor) -> tuple[int, Tensor] | None:
    """A constant whose rows along the batch axis are all equal (a tensor expanded to the batch: Hugging Face BERT's
    ``token_type_ids``, ViT's class token): ``(physical batch axis, the constant's first row alone)``; None when the
    two graphs' copies differ in more than one axis or their rows differ."""
    axes = [a for a, (m, n) in enumerate(zip(t.data.shape, p.data.shape)) if m != n]
    if t.data.ndim != p.data.ndim or len(axes) != 1:
        return None
    axis = axes[0]
    one = t.data.take([0], axis=axis)
    if not all(np.array_equal(np.broadcast_to(one, d.shape), d) for d in (t.data, p.data)):
        return None
    return axis, dataclasses.replace(t, name=f"{t.name}_row", data=one, shape=tuple(
        1 if logical == t.order[axis] else size for logical, size in enumerate(t.shape)))


def _one_row(op: Op, other: Op, position: int, batch: int) -> list[Op] | None:
    """A broadcasting op's constant operand expanded to the batch: one row of it, which the op broadcasts against
    its other operand's batch (refused where the op's output would lose the batch)."""
    rows = batch_rows(op.inputs[position], other.inputs[position])
    if rows is None:
        return None
    shapes = [rows[1].physical_shape if k == position else x.physical_shape
              for k, x in enumerate(op.inputs) if x is not None]
    if np.broadcast_shapes(*shapes) != op.outputs[0].physical_shape:
        return None
    op.inputs[position] = rows[1]
    return []


def _rows_to_batch(op: Op, other: Op, position: int, batch: int) -> list[Op] | None:
    """A CONCATENATION operand expanded to the batch (ViT's class token): one row of it, broadcast at run time to the
    batch of an activation operand (SHAPE of that operand, its batch entry kept, BROADCAST_TO)."""
    t = op.inputs[position]
    rows = batch_rows(t, other.inputs[position])
    if rows is None:
        return None
    axis, row = rows
    x = next((x for x in op.inputs if x is not None and not x.is_const and x.rank == t.rank and
              x.physical_shape[axis] == t.physical_shape[axis]), None)
    if x is None or op.options.get("Axis") in (axis, axis - t.rank):
        return None
    keep = np.zeros(t.rank, np.int32)
    keep[axis] = 1
    fixed = np.asarray(row.physical_shape, np.int32) * (1 - keep)
    dims, batch_dims, target = (Tensor(f"{t.name}_{what}", (t.rank,), "int32") for what in ("dims", "keep", "target"))
    out = Tensor(f"{t.name}_rows", tuple(batch if logical == t.order[axis] else size
                                         for logical, size in enumerate(t.shape)), t.dtype, perm=t.perm, quant=t.quant)
    out.shape_signature = tuple(-1 if a == axis else size for a, size in enumerate(out.physical_shape))
    op.inputs[position] = out
    return [Op("SHAPE", [x], [dims], {"OutType": 2}, op.source),
            Op("MUL", [dims, Tensor(f"{t.name}_batch_axis", (t.rank,), "int32", data=keep)], [batch_dims], {},
               op.source),
            Op("ADD", [batch_dims, Tensor(f"{t.name}_sizes", (t.rank,), "int32", data=fixed)], [target], {}, op.source),
            Op("BROADCAST_TO", [row, target], [out], {}, op.source)]


BROADCASTING = ("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "POW", "FLOOR_DIV",
                "FLOOR_MOD", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "EQUAL", "NOT_EQUAL", "LOGICAL_AND",
                "LOGICAL_OR", "SELECT_V2")
"""Builtins that broadcast their operands (numpy rules): a constant operand may hold one row of the batch."""

PATCHES = {("RESHAPE", 1): _reshape_shape, ("STRIDED_SLICE", 2): _strided_slice_end, ("SLICE", 2): _slice_size}
"""``(op, input position) -> rewrite``: constants that may follow the batch, written so that they hold for any
batch. Each returns the ops to insert before the op (usually none), or None when it cannot (then the node is
refused)."""

OPERAND_PATCHES = {**dict.fromkeys(BROADCASTING, _one_row), "CONCATENATION": _rows_to_batch}
"""``op -> rewrite`` of a constant operand at any position, as :data:`PATCHES`."""


def patch_for(op: Op, position: int):
    """The rewrite of ``op``'s constant input ``position`` that follows the batch (None: there is none)."""
    return PATCHES.get((op.code, position)) or OPERAND_PATCHES.get(op.code)


def _expanded(t: Tensor, p: Tensor) -> str:
    """What a constant that holds the batch is, for messages."""
    if t.data is not None and p.data is not None and batch_rows(t, p) is not None:
        return " (a tensor expanded to the batch, t.expand(x.size(0), ...): equal rows)"
    return ""


def mark_dynamic_batch(graph: Graph, probe: Graph, batch: int, rows: int) -> Graph:
    """Write the batch of ``graph`` (lowered at ``rows`` rows) as dynamic, from ``probe`` (the same model lowered at
    one more row); default shapes are those at ``batch`` rows."""
    for op, other in zip(graph.ops, probe.ops):
        if op.code != other.code:
            raise UnsupportedOpError(f"dynamic_batch: the graph changes with the batch size at {_where(op)} "
                                     f"({op.code} at one batch, {other.code} at the next). {_FIX}")
    if len(graph.ops) != len(probe.ops):
        raise UnsupportedOpError(f"dynamic_batch: the graph changes with the batch size ({len(graph.ops)} ops at one "
                                 f"batch, {len(probe.ops)} at the next). {_FIX}")
    for op, other in zip(graph.ops, probe.ops):
        for key, value in op.options.items():
            if np.array_equal(np.asarray(value), np.asarray(other.options.get(key))):
                continue
            new_shape = _one_entry(value, other.options[key]) if op.code == "RESHAPE" and key == "NewShape" else None
            if new_shape is None:
                raise UnsupportedOpError(f"dynamic_batch: {_where(op)} option {key}={value!r} is computed from the "
                                         f"batch size. {_FIX}")
            op.options[key] = new_shape
    tensors, op_io, _, _ = tensor_table(graph)
    probe_tensors = tensor_table(probe)[0]
    users: dict[int, list[tuple[int, int]]] = {}
    for number, (ins, _) in enumerate(op_io):
        for position, index in enumerate(ins):
            if index >= 0:
                users.setdefault(index, []).append((number, position))
    differ = [(index, t, p) for index, (t, p) in enumerate(zip(tensors, probe_tensors))
              if t.physical_shape != p.physical_shape or (t.data is not None and not np.array_equal(t.data, p.data))]
    for index, t, p in sorted(differ, key=lambda d: not d[1].is_variable):  # a state first: its reset follows it
        first = graph.ops[users[index][0][0]] if index in users else None
        if len(t.shape) != len(p.shape):
            raise UnsupportedOpError(f"dynamic_batch: the graph changes with the batch size at {_where(first, t)} "
                                     f"(rank {len(t.shape)} at one batch, {len(p.shape)} at the next). {_FIX}")
        if t.is_variable:
            raise UnsupportedOpError(f"dynamic_batch: {_where(t.producer or first, t)} keeps a state of the batch's "
                                     "size between invocations, which the file cannot resize. Expected unroll_rnn=True "
                                     "(per-step ops, no state tensor) or dynamic_batch=False.")
    constants, activations = [], []
    for index, t, p in differ:
        consumers = users.get(index, [])
        first = graph.ops[consumers[0][0]] if consumers else None
        if t.data is not None:
            if not consumers or any(patch_for(graph.ops[n], k) is None for n, k in consumers):
                raise UnsupportedOpError(f"dynamic_batch: {_where(first, t)} holds a constant computed from the batch "
                                         f"size{_expanded(t, p)}. {_FIX}")
            constants.append((t, p, consumers))
        else:
            activations.append((t, p))
    inserted: dict[int, list[Op]] = {}
    for t, p, consumers in constants:
        for number, position in consumers:
            op = graph.ops[number]
            ops = patch_for(op, position)(op, probe.ops[number], position, batch)
            if ops is None:
                raise UnsupportedOpError(f"dynamic_batch: {_where(op, t)} holds a constant computed from the batch "
                                         f"size{_expanded(t, p)} that {op.code} cannot take for any batch. {_FIX}")
            inserted.setdefault(id(op), []).extend(ops)
    for op in (new for ops in inserted.values() for new in ops):
        op.outputs[0].producer = op
    graph.ops = [new for op in graph.ops for new in (*inserted.get(id(op), ()), op)]
    for t, p in activations:
        t.shape_signature = tuple(-1 if a != b else a for a, b in zip(t.physical_shape, p.physical_shape))
        t.shape = tuple(a + (batch - rows) * (b - a) for a, b in zip(t.shape, p.shape))
    return graph
