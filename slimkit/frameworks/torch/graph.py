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

import contextlib
import inspect
import logging
import operator
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimkit.errors import UnsupportedOpError
from slimkit.frameworks.torch import fake_kernels
from slimkit.frameworks.torch.fake_inputs import fake_tensors, static_fake_mode
from slimkit.utils.gc_pause import gc_paused

_log = logging.getLogger(__name__)


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
    """Capture ``model`` (in eval mode) on ``example_inputs``; every module's train/eval mode is restored after.

    The fast path traces with ``make_fx`` (pre-dispatch, fake tensors, module stacks recorded),
    the tracer ``torch.export`` itself uses, without export's verification and bookkeeping; it
    yields the same graph as ``torch.export`` and declines anything unusual (non-tensor inputs,
    tensor subclasses, higher-order ops, grad-mode or autocast regions, attribute or buffer assignment,
    data-dependent shapes), which then goes through ``torch.export``.

    Raises:
        UnsupportedOpError: torch.export could not capture the model; the message carries its reason.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    fake_kernels.register()  # fake-quant ops traced by shape, not run on real zeros
    training = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with gc_paused():  # see slimkit.utils.gc_pause
            program = _program(model, tuple(example_inputs))
    finally:
        for module, mode in training.items():  # each module as it was (a frozen BatchNorm stays in eval)
            module.training = mode
    signature = program.graph_signature
    state_names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
                   **getattr(signature, "inputs_to_lifted_tensor_constants", {})}
    graph = program.graph
    return CapturedGraph(model, program, graph, state_names, _call_indices(graph))


def _program(model: nn.Module, example_inputs: tuple) -> Any:
    if _FAST_CAPTURE:
        try:
            return _fast_program(model, example_inputs)
        except Exception as error:  # declined or failed: torch.export decides
            _log.debug("fast capture of %s fell back to torch.export: %s: %s", type(model).__name__,
                       type(error).__name__, error)
    return _export_program(model, example_inputs)


def _export_program(model: nn.Module, example_inputs: tuple) -> Any:
    try:
        return torch.export.export(model, example_inputs, strict=False)
    except Exception as error:  # torch raises many types here; report them uniformly
        raise UnsupportedOpError(
            f"torch.export could not capture {type(model).__name__}: {type(error).__name__}: {error}. "
            "Expected a model torch.export can trace; move data-dependent Python control flow out of "
            "forward or exclude the offending submodule.") from error


# Internal switch: False sends every capture through torch.export (for comparisons and bisecting).
_FAST_CAPTURE = True


class _Declined(Exception):
    """The fast capture path does not handle this model; torch.export does."""


@dataclass
class _Signature:
    """The parts of ``torch.export.ExportGraphSignature`` that consumers read."""

    inputs_to_parameters: dict[str, str]
    inputs_to_buffers: dict[str, str]
    inputs_to_lifted_tensor_constants: dict[str, str]
    user_inputs: list[str]
    user_outputs: list[str]


@dataclass
class _Program:
    """Stands in for ``torch.export.ExportedProgram`` with the fields consumers read."""

    graph_module: torch.fx.GraphModule
    graph_signature: _Signature
    state_dict: dict[str, torch.Tensor]
    constants: dict[str, torch.Tensor]

    @property
    def graph(self) -> torch.fx.Graph:
        return self.graph_module.graph

    def __str__(self) -> str:
        code = self.graph_module.print_readable(print_output=False)
        sig = self.graph_signature
        lines = [code, "Graph signature:", "    # inputs"]
        lines += [f"    {k}: PARAMETER target={v!r}" for k, v in sig.inputs_to_parameters.items()]
        lines += [f"    {k}: BUFFER target={v!r}" for k, v in sig.inputs_to_buffers.items()]
        lines += [f"    {k}: CONSTANT_TENSOR target={v!r}" for k, v in sig.inputs_to_lifted_tensor_constants.items()]
        lines += [f"    {k}: USER_INPUT" for k in sig.user_inputs]
        lines += ["", "    # outputs"] + [f"    {k}: USER_OUTPUT" for k in sig.user_outputs]
        return "\n".join(lines) + "\n"


_ALLOWED_NON_OPS = {operator.getitem}


def _fast_program(model: nn.Module, args: tuple) -> _Program:
    """``torch.export``'s non-strict pre-dispatch trace, minus its verification and bookkeeping."""
    from torch._dispatch.python import enable_python_dispatcher
    from torch._export.utils import _compiling_state_context
    from torch._functorch._aot_autograd.graph_capture_wrappers import create_functional_call
    from torch.fx._lazy_graph_module import _use_lazy_graph_module
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils import _pytree as pytree

    if not args or not all(isinstance(a, torch.Tensor) for a in args) or isinstance(model, torch.fx.GraphModule):
        raise _Declined("non-tensor inputs")
    arg_names = _positional_names(model, len(args))
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    state = {**params, **buffers}
    if len(state) != len(params) + len(buffers):
        raise _Declined("a parameter and a buffer share a name")
    # the placeholders are recorded with torch functions off, which a subclass's __torch_function__
    # would notice, and the forward turns them back on, which a caller that turned them off would
    if any(type(t) not in (torch.Tensor, nn.Parameter) for t in (*state.values(), *args)):
        raise _Declined("tensor subclass")
    if not torch._C._is_torch_function_enabled():
        raise _Declined("torch functions disabled by the caller")
    names = list(state)
    call = create_functional_call(model, names, len(names), store_orig_mod=True, strict_out_tuple=False)
    attrs_before = _tensor_attributes(model)

    def flat_fn(*flat):
        with torch._C._EnableTorchFunction():  # the forward runs under make_fx's torch-function modes
            return tuple(pytree.tree_leaves(call(*flat)))

    flat_fn._orig_mod = model  # make_fx records module stacks under this root
    fake_mode = static_fake_mode()
    fakes = fake_tensors(fake_mode, [*state.values(), *args])
    # As torch.export: backend flags off, torch.compiler.is_exporting() true, Python dispatcher on,
    # fake tensors (made here: make_fx's own conversion describes each tensor in full generality).
    # Speed, not content: no per-node Python stack traces (meta 'stack_trace': nothing reads them, a
    # fifth of the trace); the placeholders are recorded with torch functions off (make_fx's two
    # torch-function modes would otherwise see every metadata query on every parameter, a fifth of
    # the trace; the forward turns them back on); the graph module's code is generated lazily.
    with _no_stack_traces(), _backend_flags_off(), _compiling_state_context(), enable_python_dispatcher(), \
            _use_lazy_graph_module(True), fake_mode, torch._C.DisableTorchFunction():
        gm = make_fx(flat_fn, pre_dispatch=True, record_module_stack=True)(*fakes)
    if _tensor_attributes(model) != attrs_before:
        raise _Declined("forward assigns tensor attributes")
    graph = gm.graph
    graph.eliminate_dead_code(lambda n: n.op != "call_function" or n.target not in _DEAD_OK)
    _check_nodes(gm, n_state=len(names))

    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    non_persistent = _non_persistent_buffers(model)
    to_params, to_buffers, to_constants = {}, {}, {}
    state_dict, constants = {}, {}
    # Rename placeholders the way torch.export does: p_<fqn>, b_<fqn>, c_<fqn>, then forward's argument names.
    for node, name in zip(placeholders, names):
        node.meta.pop("nn_module_stack", None)
        node.meta.pop("stack_trace", None)
        if name in params:
            node._rename("p_" + _strip(name))
            to_params[node.name] = name
            state_dict[name] = params[name]
        else:
            node._rename("b_" + _strip(name))
            to_buffers[node.name] = name
            (constants if name in non_persistent else state_dict)[name] = buffers[name]
    first_user = placeholders[len(names)]
    for i, node in enumerate(n for n in list(graph.nodes) if n.op == "get_attr"):
        value = getattr(gm, node.target)
        name = f"lifted_tensor_{i}"
        with graph.inserting_before(first_user):
            lifted = graph.placeholder("c_" + name)
        lifted.meta["val"] = node.meta.get("val", value)
        node.replace_all_uses_with(lifted)
        graph.erase_node(node)
        delattr(gm, node.target)
        to_constants[lifted.name] = name
        constants[name] = value
    user_nodes = placeholders[len(names):]
    for node, name in zip(user_nodes, arg_names):
        node.meta.pop("nn_module_stack", None)
        node.meta.pop("stack_trace", None)
        node._rename(name.lower())
    for node in graph.nodes:
        if node.op == "placeholder":
            node.target = node.name
    _normalise_module_stacks(graph, model)
    gm.recompile()  # lazy: the code is generated when first used
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    outputs = [a.name if isinstance(a, torch.fx.Node) else str(a) for a in pytree.tree_leaves(output.args)]
    signature = _Signature(to_params, to_buffers, to_constants, [n.name for n in user_nodes], outputs)
    return _Program(gm, signature, state_dict, constants)


_DEAD_OK = {torch.ops.aten.detach.default}


def _positional_names(model: nn.Module, count: int) -> list[str]:
    """The input placeholders' names as torch.export gives them: forward's parameter names, ``<name>_<i>`` for the
    values taken by ``*<name>``."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = []
    for param in inspect.signature(model.forward).parameters.values():
        if param.kind in kinds:
            names.append(param.name)
        elif param.kind == inspect.Parameter.VAR_POSITIONAL:
            names += [f"{param.name}_{i}" for i in range(max(count - len(names), 0))]
            break
    if len(names) < count:
        raise _Declined("forward signature")
    return names[:count]


def _tensor_attributes(model: nn.Module) -> dict:
    return {(name, key): id(value) for name, module in model.named_modules()
            for key, value in vars(module).items()
            if isinstance(value, torch.Tensor) or (isinstance(value, list) and value
                                                   and isinstance(value[0], torch.Tensor))}


def _non_persistent_buffers(model: nn.Module) -> set[str]:
    return {f"{name}.{b}" if name else b for name, module in model.named_modules()
            for b in module._non_persistent_buffers_set}


def _strip(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]", "_", name)


@contextlib.contextmanager
def _no_stack_traces() -> Iterator[None]:
    saved = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = saved


class _backend_flags_off:
    """As torch.export: trace with mkldnn / nnpack / cudnn flags off (keeps ops like batch_norm whole)."""

    def __enter__(self):
        self._saved = (torch.backends.mkldnn.set_flags(False), torch.backends.nnpack.set_flags(False),
                       torch.backends.cudnn.set_flags(False))

    def __exit__(self, *exc):
        mkldnn, nnpack, cudnn = self._saved
        torch.backends.mkldnn.set_flags(*mkldnn)
        torch.backends.nnpack.set_flags(*nnpack)
        torch.backends.cudnn.set_flags(*cudnn)


def _check_nodes(gm: torch.fx.GraphModule, n_state: int) -> None:
    state_nodes = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if len(state_nodes) < n_state:
                state_nodes.add(node)
        elif node.op == "get_attr":
            if not isinstance(getattr(gm, node.target, None), torch.Tensor):
                raise _Declined("get_attr of a non-tensor (higher-order op)")
        elif node.op == "call_function":
            if not isinstance(node.target, torch._ops.OpOverload) and node.target not in _ALLOWED_NON_OPS:
                raise _Declined(f"call of {node.target}")
            if isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable and any(
                    a in state_nodes for a in node.args):
                raise _Declined("mutates a parameter or buffer")
        elif node.op != "output":
            raise _Declined(f"{node.op} node")
        if _has_symbols(node.meta.get("val")):
            raise _Declined("symbolic shapes")


def _has_symbols(value: Any) -> bool:
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return True
    if isinstance(value, torch.Tensor):
        return any(isinstance(d, torch.SymInt) for d in value.shape)
    if isinstance(value, (list, tuple)):
        return any(_has_symbols(v) for v in value)
    return False


def _normalise_module_stacks(graph: torch.fx.Graph, model: nn.Module) -> None:
    # torch.export's format: a root entry ('L__self__': ('', '<root class>')), then one entry per
    # module call keyed uniquely per call, valued (qualified path, class name).
    root = ("L__self__", ("", type(model).__module__ + "." + type(model).__qualname__))
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        entries = [root] + [("L__self__" + key, (_normalise_path(path), _type_name(ty)))
                            for key, (path, ty) in stack.items() if _normalise_path(path)]
        node.meta["nn_module_stack"] = dict(entries)


def _type_name(ty: Any) -> str:
    return ty if isinstance(ty, str) else ty.__module__ + "." + ty.__qualname__
