"""Graph passes on the IR after lowering (most fusion happens as peepholes during lowering)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from slimkit.converter.ir import Graph, QuantParams, Tensor
from slimkit.converter.state import reset_state
from slimkit.converter.transposes import split_batched_transposes
from slimkit.converter.weight_only import encode_weight_only
from slimkit.converter.writer import _root, tensor_table


def remove_dead_ops(graph: Graph) -> int:
    """Drop ops none of whose outputs reach a graph output; returns how many were removed."""
    live = {id(_root(t)) for t in graph.outputs}
    kept = []
    for op in reversed(graph.ops):
        if any(id(_root(t)) in live for t in op.outputs):
            kept.append(op)
            live.update(id(_root(t)) for t in op.inputs if t is not None)
    removed = len(graph.ops) - len(kept)
    graph.ops = kept[::-1]
    return removed


def _consumers(graph: Graph) -> dict[int, int]:
    counts: dict[int, int] = {}
    for op in graph.ops:
        for t in op.inputs:
            if t is not None:
                counts[id(_root(t))] = counts.get(id(_root(t)), 0) + 1
    return counts


def collapse_reshapes(graph: Graph) -> int:
    """RESHAPE(RESHAPE(x)) -> RESHAPE(x); a RESHAPE to its input's own shape disappears."""
    outputs = {id(_root(t)) for t in graph.outputs}
    counts = _consumers(graph)
    replace: dict[int, object] = {}
    changed = 0
    for op in graph.ops:
        op.inputs = [replace.get(id(_root(t)), t) if t is not None else None for t in op.inputs]
        if op.code != "RESHAPE":
            continue
        src = _root(op.inputs[0])
        prev = src.producer
        if prev is not None and prev.code == "RESHAPE" and counts.get(id(src), 0) == 1 and id(src) not in outputs:
            op.inputs[0] = prev.inputs[0]
            changed += 1
        out = _root(op.outputs[0])
        if _root(op.inputs[0]).physical_shape == out.physical_shape and id(out) not in outputs:
            replace[id(out)] = op.inputs[0]
            changed += 1
    return changed


def fold_reshape_into_reduce(graph: Graph) -> int:
    """MEAN / SUM (keep_dims) followed by a RESHAPE that only drops the reduced axes -> keep_dims=False."""
    outputs = {id(_root(t)) for t in graph.outputs}
    counts = _consumers(graph)
    dropped = set()
    for op in graph.ops:
        if op.code != "RESHAPE":
            continue
        src = _root(op.inputs[0])
        prev = src.producer
        if prev is None or prev.code not in ("MEAN", "SUM", "REDUCE_MAX") or not prev.options.get("KeepDims"):
            continue
        if counts.get(id(src), 0) != 1 or id(src) in outputs:
            continue
        axes = set(int(a) for a in prev.inputs[1].data.reshape(-1))
        kept = tuple(d for i, d in enumerate(src.physical_shape) if i not in axes)
        out = _root(op.outputs[0])
        if kept != out.physical_shape:
            continue
        prev.options["KeepDims"] = False
        prev.outputs[0] = out
        out.producer = prev
        dropped.add(id(op))
    graph.ops = [op for op in graph.ops if id(op) not in dropped]
    return len(dropped)


def _same_quant(a: QuantParams | None, b: QuantParams | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.quantized_dimension == b.quantized_dimension and np.array_equal(a.scale, b.scale) and \
        np.array_equal(a.zero_point, b.zero_point)


def share_constants(graph: Graph) -> int:
    """Constants with the same type, layout, bytes and quantization become one tensor that every op reading them
    shares: one buffer in the file for a weight a module called several times (or tied parameters) reads on each
    call. Only constants of the same type and shape are compared (hashed, then compared in full). Returns how many
    duplicate tensors were dropped.

    Example:

    >>> import numpy as np
    >>> from slimkit.converter.ir import Graph, Op, Tensor
    >>> w = [Tensor(f'w{i}', (2, 2), data=np.eye(2, dtype=np.float32)) for i in range(2)]
    >>> x, y, z = Tensor('x', (2, 2)), Tensor('y', (2, 2)), Tensor('z', (2, 2))
    >>> graph = Graph([Op('MUL', [x, w[0]], [y]), Op('MUL', [y, w[1]], [z])], [x], [z])
    >>> share_constants(graph), graph.ops[1].inputs[1].name
    (1, 'w0')
    """
    outputs = {id(t) for t in graph.outputs}
    uses: list[tuple[Any, int]] = []
    candidates: dict[tuple, dict[int, Tensor]] = {}  # type, layout, size -> distinct tensors
    for op in graph.ops:
        for i, t in enumerate(op.inputs):
            if t is None or not t.is_const or t.base is not None or t.is_variable or id(t) in outputs:
                continue
            key = (t.dtype, t.physical_shape, t.perm, t.data.dtype.str)
            candidates.setdefault(key, {})[id(t)] = t
            uses.append((op, i))
    twins: dict[int, Tensor] = {}
    for group in candidates.values():  # only constants that share a shape are read (and hashed)
        if len(group) < 2:
            continue
        seen: dict[bytes, list[Tensor]] = {}
        for t in group.values():
            values = np.ascontiguousarray(t.values())
            same = seen.setdefault(hashlib.blake2b(values.view(np.uint8), digest_size=16).digest(), [])
            twin = next((c for c in same if _same_quant(c.quant, t.quant) and np.array_equal(c.values(), values)),
                        None)
            if twin is None:
                same.append(t)
            else:
                twins[id(t)] = twin
    for op, i in uses:
        op.inputs[i] = twins.get(id(op.inputs[i]), op.inputs[i])
    return len(twins)


def unique_names(graph: Graph) -> int:
    """Give every tensor of the file a name of its own: a later tensor named like an earlier one becomes
    ``<name>_<n>`` with the first ``n`` no tensor holds (ai-edge-quantizer and other tools key tensors by name and
    refuse a file that repeats one). Model inputs come first in the file, so they keep their names (the signature's
    input names). Returns how many tensors were renamed.

    Example:

    >>> from slimkit.converter.ir import Graph, Op, Tensor
    >>> x, y, z = Tensor('x', (2,)), Tensor('y', (2,)), Tensor('y', (2,))
    >>> graph = Graph([Op('RELU', [x], [y]), Op('RELU', [y], [z])], [x], [z])
    >>> unique_names(graph), [t.name for t in (x, y, z)]
    (1, ['x', 'y', 'y_1'])
    """
    tensors = tensor_table(graph)[0]
    taken = {t.name for t in tensors}
    seen: set[str] = set()
    renamed = 0
    for t in tensors:
        if t.name in seen:
            n = 1
            while f"{t.name}_{n}" in taken:
                n += 1
            t.name = f"{t.name}_{n}"
            taken.add(t.name)
            renamed += 1
        seen.add(t.name)
    return renamed


def run_passes(graph: Graph, options) -> Graph:
    """The graph passes of ``options.optimize`` (see :class:`~slimkit.converter.options.ConverterOptions`).

    Every level removes dead ops. Level 1 (and up) turns quantized chains (DEQUANTIZE -> op -> QUANTIZE)
    into int8 kernels; level 2 then collapses RESHAPE chains and folds a RESHAPE that only drops
    reduced axes into its MEAN / SUM / REDUCE_MAX (``keep_dims=False``) and writes a batched transpose of thin
    matrices (a channel shuffle) as three TRANSPOSEs XNNPACK runs faster (:mod:`slimkit.converter.transposes`).
    Weight-only quantized Linear layers read their weights from the DEQUANTIZE of their codes
    (:mod:`slimkit.converter.weight_only`). With ``sparse_weights``, weights are stored sparsely behind DENSIFY ops
    where that is smaller (:mod:`slimkit.converter.sparse`). Last, every state tensor is reset to zeros before its
    reader (:func:`~slimkit.converter.state.reset_state`).
    """
    remove_dead_ops(graph)
    if options.optimize >= 1 and graph.quant_table:
        from slimkit.converter.quant import int8_kernels

        int8_kernels(graph)
        remove_dead_ops(graph)
    if options.optimize >= 2:
        collapse_reshapes(graph)
        remove_dead_ops(graph)
        fold_reshape_into_reduce(graph)
        split_batched_transposes(graph)
    if options.quantize_io or options.quantized_input_stats:
        from slimkit.converter.quant import quantize_io

        quantize_io(graph, options)
    remove_dead_ops(graph)
    encode_weight_only(graph)
    if options.hybrid:
        from slimkit.converter.quant import apply_hybrid

        apply_hybrid(graph, options)
    if options.sparse_weights:
        from slimkit.converter.sparse import encode_sparse_weights

        encode_sparse_weights(graph)
    reset_state(graph)
    return graph
