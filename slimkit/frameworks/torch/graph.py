"""One dataflow-graph capture of a PyTorch model, shared by speedup, the TFLite converter and
graph-mode quantization.

The graph is ``torch.export``'s ATen-level graph (before decompositions: ``aten.conv2d``,
``aten.linear``, ``aten.batch_norm`` stay whole), captured in eval mode. Each ``call_function``
node is traced back to the module that called it (``module_path``) and to which call of that
module it belongs (``call_index``, for modules called several times). Parameters and buffers
are placeholders; :meth:`CapturedGraph.tensor` gives their values.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.graph import capture_graph
>>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
>>> captured = capture_graph(model, (torch.randn(1, 1, 5, 5),))
>>> [(str(n.target), captured.module_path(n)) for n in captured.call_nodes()]
[('aten.conv2d.default', '0'), ('aten.relu.default', '1')]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimkit.errors import UnsupportedOpError


@dataclass
class CapturedGraph:
    """A captured model: the exported program plus lookups from nodes to modules and tensors.

    Attributes:
        model: the captured module.
        program: the ``torch.export.ExportedProgram``.
        graph: its ``torch.fx.Graph``.
        state_names: placeholder node name -> qualified parameter / buffer / constant name.
    """

    model: nn.Module
    program: Any
    graph: torch.fx.Graph
    state_names: dict[str, str]
    _call_indices: dict[str, int] = field(default_factory=dict)

    def call_nodes(self) -> Iterator[torch.fx.Node]:
        """The ``call_function`` nodes, in execution order."""
        return (node for node in self.graph.nodes if node.op == "call_function")

    def user_inputs(self) -> list[torch.fx.Node]:
        """Placeholders that are model inputs (not parameters, buffers or constants)."""
        return [n for n in self.graph.nodes if n.op == "placeholder" and n.name not in self.state_names]

    def module_path(self, node: torch.fx.Node) -> str:
        """Qualified name of the innermost module whose forward produced ``node`` ('' for the root)."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        path, _ = list(stack.values())[-1]
        return _normalise_path(path)

    def call_index(self, node: torch.fx.Node) -> int:
        """Which call (0, 1, ...) of ``module_path(node)`` produced ``node``."""
        return self._call_indices.get(node.name, 0)

    def tensor(self, node: Any) -> torch.Tensor | None:
        """The parameter / buffer / constant a placeholder stands for; None for anything else."""
        if not isinstance(node, torch.fx.Node) or node.name not in self.state_names:
            return None
        name = self.state_names[node.name]
        if name in self.program.constants:
            return self.program.constants[name]
        return self.program.state_dict[name]


def _normalise_path(path: str) -> str:
    # torch.export records paths like "L['self'].layer1[0].conv1" or "layer1.0.conv1".
    path = path.replace("L['self'].", "").replace("L['self']", "")
    for old, new in (("[", "."), ("]", ""), ("'", "")):
        path = path.replace(old, new)
    return path.strip(".")


def _call_indices(graph: torch.fx.Graph) -> dict[str, int]:
    # nn_module_stack keys are unique per call of a module ("L__self___head", "L__self___head_1", ...).
    seen: dict[str, list[str]] = {}
    indices = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op != "call_function" or not stack:
            continue
        key, (path, _) = list(stack.items())[-1]
        calls = seen.setdefault(path, [])
        if key not in calls:
            calls.append(key)
        indices[node.name] = calls.index(key)
    return indices


def capture_graph(model: nn.Module, example_inputs: Sequence[Any] | torch.Tensor) -> CapturedGraph:
    """Capture ``model`` (in eval mode) on ``example_inputs`` with ``torch.export``.

    Raises:
        UnsupportedOpError: torch.export could not capture the model; the message carries its reason.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as error:  # torch raises many types here; report them uniformly
        raise UnsupportedOpError(
            f"torch.export could not capture {type(model).__name__}: {type(error).__name__}: {error}. "
            "Expected a model torch.export can trace; move data-dependent Python control flow out of "
            "forward or exclude the offending submodule.") from error
    finally:
        model.train(was_training)
    signature = program.graph_signature
    state_names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
                   **getattr(signature, "inputs_to_lifted_tensor_constants", {})}
    graph = program.graph
    return CapturedGraph(model, program, graph, state_names, _call_indices(graph))
