"""Channel analysis: walk the captured graph once, couple channels, decide which ones go.

A channel is removed when, at every place its values are consumed, removing it is exact: the
value is zero there, or a constant that the consuming layer folds into its bias. Everything else
(model outputs, inputs, live channels, channels that reach an op that mixes them) is kept, and a
kept channel keeps every channel coupled with it. Group convolutions then get the same number of
kept channels in every group, and every layer keeps at least one channel.

Nothing here touches the model: :func:`analyse` returns a :class:`Plan`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.compression.channels import channel_view
from slimkit.errors import UnsupportedOpError
from slimkit.frameworks.torch.graph import CapturedGraph
from slimkit.speedup.parameters import free_parameter, shrink_free_parameters
from slimkit.speedup.registry import ensure_loaded, module_rule, op_name, op_rule
from slimkit.speedup.state import TensorState, UnionFind, compact, constant_state, keep_state
from slimkit.utils.threads import single_thread


@dataclass
class Plan:
    """What speedup will do: per module and role (``in``/``out``/``ch``, or a free parameter's attribute), a
    keep-vector; bias folds; ``rules``: surgery rules bound by the analysis for modules it recognised by what they
    compute (free parameters, an RMSNorm written as separate ops), used before the module-type registry;
    ``parameters``: ``{(module, attribute): channel axis}`` of the free parameters
    (:mod:`slimkit.speedup.parameters`); ``outputs``: the channel variables of the model's outputs."""

    modules: dict[str, nn.Module]
    keep: dict[tuple[str, str], np.ndarray]
    folds: dict[str, dict[int, float]] = field(default_factory=dict)
    union_find: UnionFind | None = None
    variables: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)
    rules: dict[str, Callable[..., nn.Module]] = field(default_factory=dict)
    parameters: dict[tuple[str, str], int] = field(default_factory=dict)
    outputs: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def changed(self) -> list[str]:
        """Modules that lose at least one channel."""
        return sorted({path for (path, _), keep in self.keep.items() if not keep.all()})


class _Context:
    def __init__(self, captured: CapturedGraph, weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]]):
        self.captured = captured
        self.uf = UnionFind()
        self.states: dict[str, Any] = {}
        self.variables: dict[tuple[str, str], torch.Tensor] = {}
        self.modules: dict[str, nn.Module] = {}
        self.weights_by_path = weights
        self.folds: dict[str, dict[int, tuple[float, int]]] = {}
        self.groups: dict[str, tuple[int, bool]] = {}
        self.node: torch.fx.Node | None = None
        self.balanced: list[torch.Tensor] = []
        self.summaries: dict[str, tuple[Any, Any]] = {}
        self.heads: dict[str, list[tuple[torch.Tensor, int]]] = {}
        self.splits: list[tuple[str, str, torch.Tensor]] = []  # (module, attribute, parts x channels)
        self.free: dict[tuple[str, str], torch.Tensor] = {}  # free parameters met: (module, attribute) -> masked value
        self.rules: dict[str, Callable[..., nn.Module]] = {}
        self.outputs: list[torch.Tensor] = []  # the variables of the model's outputs
        self.recognised: dict[tuple[str, str], Any] = {}  # (module, check) -> what a rule's structural check found
        self._parameter_nodes = set(captured.program.graph_signature.inputs_to_parameters)

    def parameter_state(self, node: torch.fx.Node) -> TensorState:
        """A parameter, buffer or constant: a free parameter (:mod:`slimkit.speedup.parameters`) gets one channel
        variable per index of its last axis and its masked values; anything else is a constant tied to positions."""
        name = self.captured.state_names[node.name]
        found = free_parameter(self.captured.model, name) if node.name in self._parameter_nodes else None
        if found is None:
            return constant_state(self.captured.tensor(node))
        path, attribute, module = found
        masked = self.weights_by_path.get(name) or (self.weights_by_path.get(path) if attribute == "weight" else None)
        value = (masked[0] if masked else getattr(module, attribute)).detach().cpu()
        self.modules[path] = module
        self.free[(path, attribute)] = value
        variables = self.vars(path, attribute, value.shape[-1])
        return TensorState(channel_view(variables, value.dim(), -1), compact(value.to(torch.float64)),
                           tuple(value.shape))

    # --- helpers the rules use -------------------------------------------------------------
    def state(self, arg: Any) -> Any:
        if not isinstance(arg, torch.fx.Node):
            return None
        if arg.name not in self.states and arg.name in self.captured.state_names:
            self.states[arg.name] = self.parameter_state(arg)  # parameters: on first use
        return self.states.get(arg.name)

    def shape(self, node: torch.fx.Node) -> Any:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return tuple(int(s) for s in val.shape)
        if isinstance(val, (list, tuple)):
            return [tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else () for v in val]
        return None

    def shape_first(self, node: torch.fx.Node) -> tuple[int, ...]:
        shape = self.shape(node)
        return tuple(shape[0]) if isinstance(shape, list) else shape

    def module_of(self, node: torch.fx.Node, param_node: Any, kind: type) -> tuple[str, nn.Module]:
        name = self.captured.state_names.get(param_node.name) if isinstance(param_node, torch.fx.Node) else None
        path = name.rpartition(".")[0] if name else None
        module = self.captured.model.get_submodule(path) if path is not None else None
        if module is None or not isinstance(module, kind):
            raise UnsupportedOpError(
                f"Speedup found {op_name(node)} at {self.captured.module_path(node) or '<root>'!r} applied to "
                f"parameters that are not those of a {kind.__name__} module. Expected the op inside its module "
                f"(e.g. nn.Conv2d rather than F.conv2d with a free parameter); exclude that layer from pruning "
                f"and speedup, or wrap the call in the module.")
        self.modules[path] = module
        return path, module

    def vars(self, path: str, role: str, n: int) -> torch.Tensor:
        key = (path, role)
        if key not in self.variables:
            self.variables[key] = self.uf.new(n)
        return self.variables[key]

    def weights(self, path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if path in self.weights_by_path:
            weight, bias = self.weights_by_path[path]
        else:
            module = self.modules[path]
            weight, bias = module.weight, getattr(module, "bias", None)
        bias = bias.detach().cpu() if isinstance(bias, torch.Tensor) else None
        return weight.detach(), bias

    def weight_summary(self, path: str, transposed: bool, groups: int, sums: bool = False) -> tuple[Any, Any]:
        """For a conv / linear: (out, in/groups) booleans "a nonzero weight connects them" and, when
        ``sums``, the weights summed over the kernel (float64). Cached per module (shared modules)."""
        cached = self.summaries.get(path)
        if cached is None or (sums and cached[1] is None):
            weight = self.weights(path)[0]
            if weight.dim() == 2:  # linear (out, in); transposed: (in, out), Hugging Face's Conv1D
                w = (weight.t() if transposed else weight).unsqueeze(-1)
            elif transposed:  # (in, out/g, k...) -> (out, in/g, k)
                cin, per_out = weight.shape[0], weight.shape[1]
                w = weight.reshape(groups, cin // groups, per_out, -1).permute(0, 2, 1, 3).reshape(
                    groups * per_out, cin // groups, -1)
            else:
                w = weight.reshape(weight.shape[0], weight.shape[1], -1)
            used = cached[0] if cached is not None else (w != 0).any(-1).cpu()
            cached = (used, w.sum(-1, dtype=torch.float64).cpu() if sums else None)
            self.summaries[path] = cached
        return cached

    def fold(self, path: str, channel: int, value: float, var: int) -> None:
        folds = self.folds.setdefault(path, {})
        previous = folds.get(channel)
        if previous is not None and previous[0] != value:
            self.uf.keep(torch.tensor([var]))  # different constants on different calls: cannot fold, keep it
        folds[channel] = (value, var)

    def group_constraint(self, path: str, groups: int, depthwise: bool) -> None:
        self.groups[path] = (groups, depthwise)

    def balance(self, variables: torch.Tensor) -> None:
        """Rows of ``variables`` (groups x channels) must keep equally many channels (chunk, group conv)."""
        self.balanced.append(variables)

    # --- the walk ----------------------------------------------------------------------------
    def run(self) -> None:
        graph = self.captured.graph
        for node in graph.nodes:
            self.node = node
            if node.op == "placeholder":
                shape = self.shape(node)
                if node.name not in self.captured.state_names and shape is not None:
                    self.states[node.name] = keep_state(shape)
            elif node.op == "call_function":
                self.states[node.name] = self._apply(node)
            elif node.op == "output":
                self._keep_outputs(node.args)
            elif node.op == "get_attr":
                value = getattr(self.captured.program.graph_module, node.target, None)
                if isinstance(value, torch.Tensor):
                    self.states[node.name] = constant_state(value)

    def _apply(self, node: torch.fx.Node) -> Any:
        for arg in node.all_input_nodes:
            if arg.name not in self.states and arg.op != "get_attr" and arg.name not in self.captured.state_names:
                shape = self.shape(arg)
                if shape is not None and not isinstance(shape, list):
                    self.states[arg.name] = keep_state(shape)
        rule = op_rule(node)
        return self._unknown(node) if rule is None else rule(self, node)

    def _unknown(self, node: torch.fx.Node) -> Any:
        """An operator without a rule: exact when its inputs keep all their channels. That is free where
        they carry no pruned channel (positions, attention masks, shapes, live features); where a pruned
        channel reaches it, stop and name the masked layers whose exclusion lets it through."""
        states = [s for arg in node.all_input_nodes for s in _as_list(self.state(arg)) if isinstance(s, TensorState)]
        pruned = [ids[~torch.isnan(const)] for ids, const in (torch.broadcast_tensors(s.ids, s.const) for s in states)]
        feeding = self._masked_layers(torch.cat(pruned) if pruned else torch.zeros(0, dtype=torch.long))
        if feeding:
            name = op_name(node)
            raise UnsupportedOpError(
                f"Speedup cannot remove pruned channels that reach the operator {name} (node {node.name!r}) in "
                f"module {self.captured.module_path(node) or '<root>'!r}: it has no speedup rule. Expected pruned "
                f"channels to reach only supported operators (see slimkit.speedup.registry.OP_RULES). To proceed, "
                f"add {{'exclude': True, 'op_names': {feeding!r}}} to the pruner's config_list, or register a rule "
                f"with slimkit.speedup.registry.register_op({name!r}).")
        for state in states:
            self.uf.keep(state.ids)
        shape = self.shape(node)
        if shape is None:
            return None
        return [keep_state(tuple(s)) for s in shape] if isinstance(shape, list) else keep_state(shape)

    def _masked_layers(self, variables: torch.Tensor) -> list[str]:
        """Masked layers whose output channels are coupled with ``variables``, in model order."""
        roots = set(self.uf.roots(variables[variables > 0]).tolist())
        coupled = {path for (path, role), ids in self.variables.items()
                   if role == "out" and path in self.weights_by_path and roots & set(self.uf.roots(ids).tolist())}
        return [name for name, _ in self.captured.model.named_modules() if name in coupled]

    def _keep_outputs(self, arg: Any) -> None:
        if isinstance(arg, (list, tuple)):
            for item in arg:
                self._keep_outputs(item)
            return
        state = self.state(arg)
        for s in state if isinstance(state, list) else [state]:
            if isinstance(s, TensorState):
                self.uf.keep(s.ids)
                self.outputs.append(s.ids.reshape(-1))


def _as_list(state: Any) -> list[Any]:
    return state if isinstance(state, list) else [state]


def analyse(captured: CapturedGraph, weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
            keep_modules: tuple[type, ...] = ()) -> Plan:
    """Decide the kept channels of every module for the masked ``weights`` ({path: (weight, bias)}); the channels of
    modules of ``keep_modules`` types (and every channel coupled with them) are kept."""
    ensure_loaded()
    with single_thread():
        return _analyse(captured, weights, keep_modules)


def _analyse(captured: CapturedGraph, weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
             keep_modules: tuple[type, ...]) -> Plan:
    context = _Context(captured, weights)
    for user_input in captured.user_inputs():
        shape = context.shape(user_input)
        if shape is not None:
            context.states[user_input.name] = keep_state(shape)
    context.run()
    for (path, _), variables in context.variables.items():
        if isinstance(context.modules.get(path), keep_modules):
            context.uf.keep(variables)
    _keep_uncoupled(context)
    _balance(context)
    snapshot = context.uf.kept_all()
    keep = {key: context.uf.kept(variables, snapshot) for key, variables in context.variables.items()}
    folds = {path: {c: value for c, (value, var) in entries.items() if not keep[(path, "in")][c]}
             for path, entries in context.folds.items()}
    from slimkit.speedup.attention import head_attributes

    attributes = head_attributes(context.heads, context.uf, snapshot, captured.model)
    for path, name, parts in context.splits:  # balanced: every part keeps as many channels
        kept = int(context.uf.kept(parts[0], snapshot).sum())
        if kept != parts.shape[1]:
            attributes.setdefault(path, {})[name] = kept
    return Plan(context.modules, keep, {p: f for p, f in folds.items() if f}, context.uf, context.variables,
                attributes, _free_rules(context), {key: value.dim() - 1 for key, value in context.free.items()},
                torch.cat(context.outputs) if context.outputs else torch.zeros(0, dtype=torch.long))


def _keep_uncoupled(context: _Context) -> None:
    """Keep the free-parameter channels coupled with nothing else (read by a rule with variables of its own, such as
    a per-head table): no channel of the graph decides their fate, so they stay."""
    uf = context.uf
    sizes = np.bincount(uf.find_all(np.arange(uf.count)), minlength=uf.count)
    for key in context.free:
        variables = context.variables[key]
        uf.keep(variables[torch.from_numpy(sizes[uf.roots(variables)] == 1)])


def _free_rules(context: _Context) -> dict[str, Callable[..., nn.Module]]:
    """The surgery rules of the modules holding free parameters that no module rule rebuilds (an RMSNorm's rule,
    bound by its analysis rule, comes first)."""
    rules = {}
    for path in {path for path, _ in context.free}:
        if module_rule(context.modules[path]) is None:
            values = {attribute: value for (owner, attribute), value in context.free.items() if owner == path}
            rules[path] = functools.partial(shrink_free_parameters, values=values)
    return {**rules, **context.rules}


def _balance(context: _Context) -> None:
    """Equal kept counts per group of grouped convs; at least one channel per layer. Repeat to a fixpoint."""
    uf = context.uf
    constraints = []
    for (path, role), variables in context.variables.items():
        groups, depthwise = context.groups.get(path, (1, False))
        if depthwise or groups == 1 or role == "ch":
            groups = 1
        constraints.append((variables.reshape(groups, -1), 1))
    constraints += [(variables, 0) for variables in context.balanced]
    for _ in range(100):
        changed = False
        snapshot = uf.kept_all()
        for variables, minimum in constraints:
            groups = variables.shape[0]
            kept = uf.kept(variables, snapshot).reshape(groups, -1)
            target = max(int(kept.sum(1).max()), minimum)
            for g in range(groups):
                missing = target - int(kept[g].sum())
                if missing > 0:
                    dropped = np.nonzero(~kept[g])[0][:missing]
                    uf.keep(variables[g][torch.as_tensor(dropped)])
                    changed = True
        if not changed:
            return
