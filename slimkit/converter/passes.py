"""Graph passes on the IR after lowering (most fusion happens as peepholes during lowering)."""

from __future__ import annotations

from slimkit.converter.ir import Graph
from slimkit.converter.writer import _root


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


def run_passes(graph: Graph, options) -> Graph:
    remove_dead_ops(graph)
    if options.hybrid:
        from slimkit.converter.quant import apply_hybrid

        apply_hybrid(graph, options)
    return graph
