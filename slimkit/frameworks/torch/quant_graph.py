"""Graph planning for PyTorch quantization on the shared ``torch.export`` capture.

From one :func:`slimkit.frameworks.torch.graph.capture_graph` of the float model this finds
what the deployed integer model will run as one kernel (conv / linear + BatchNorm + ReLU /
ReLU6, whose output is quantized once, after the activation), how often each module is called
(a shared head gets parameters per call), and, for whole-graph quantization, every functional
tensor that will be integer (``+``, ``*``, ``torch.cat``, ``mean``, pooling, reshapes ...).

Graph tensors are named by :func:`tensor_key`: ``"<module_path>/<call_index>/<op>/<k>"``, the
``k``-th ``op`` node of that module call, so the converter can find the parameters of a node in
its own capture of the float model.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.graph import capture_graph
>>> from slimkit.frameworks.torch.quant_graph import tensor_keys
>>> class Add(torch.nn.Module):
...     def forward(self, x):
...         return torch.cat([x + 1, x * 2], 1)
>>> captured = capture_graph(Add(), (torch.randn(1, 2),))
>>> sorted(tensor_keys(captured).values())
['/0/add/0', '/0/cat/0', '/0/mul/0']
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from slimkit.compression.graph_tensor import GraphTensor
from slimkit.frameworks.torch.graph import CapturedGraph, capture_graph
from slimkit.frameworks.torch.wrapper import CompressionWrapper

_WEIGHTED = {"conv1d", "conv2d", "conv3d", "linear", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_BN = {"batch_norm", "native_batch_norm_legit_no_training"}
_FUSES_ACTIVATION = {"add", "sub", "mul", "batch_norm"}  # ops not of a layer whose int8 kernel fuses a ReLU
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)

# ATen op name -> canonical op kind (profiles and the converter speak these kinds).
OP_KINDS = {
    "add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul", "div": "div",
    "cat": "cat", "concat": "cat", "stack": "cat", "mean": "mean", "sum": "sum",
    "avg_pool1d": "avg_pool", "avg_pool2d": "avg_pool", "adaptive_avg_pool1d": "avg_pool",
    "adaptive_avg_pool2d": "avg_pool", "max_pool1d": "max_pool", "max_pool2d": "max_pool",
    "adaptive_max_pool2d": "max_pool", "view": "reshape", "reshape": "reshape", "flatten": "flatten",
    "permute": "permute", "transpose": "transpose", "squeeze": "squeeze", "unsqueeze": "unsqueeze",
    "softmax": "softmax", "_softmax": "softmax", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
    "relu_": "relu", "hardtanh": "relu6", "hardtanh_": "relu6", "relu6": "relu6", "hardswish": "hardswish",
    "hardswish_": "hardswish", "silu": "silu", "gelu": "gelu", "matmul": "matmul", "bmm": "matmul",
    "pad": "pad", "constant_pad_nd": "pad", "upsample_nearest2d": "resize", "upsample_bilinear2d": "resize",
    "contiguous": "identity", "clone": "identity", "dropout": "identity",
}


def op_name(node: torch.fx.Node) -> str:
    """``aten.add.Tensor`` -> ``'add'``; in-place and private spellings are normalised
    (``aten.relu_`` -> ``'relu'``, ``aten._softmax`` -> ``'softmax'``), as :func:`function_name` does."""
    target = node.target
    name = getattr(target, "__name__", str(target))
    packet = getattr(target, "_overloadpacket", None)
    if packet is not None:
        name = packet.__name__
    name = name.split(".")[0].strip("_")
    return _SYNONYMS.get(name, name)


# spellings of one op (``torch.concat`` is captured as ``aten.concat``, seen at run time as ``concat``)
_SYNONYMS = {"truediv": "div", "concat": "cat", "concatenate": "cat"}


def function_name(func: object) -> str:
    """The op name of a torch-level function (``Tensor.__add__`` -> ``'add'``), matching :func:`op_name`."""
    name = getattr(func, "__name__", str(func)).strip("_")
    if name.startswith("r") and name[1:] in ("add", "mul"):
        name = name[1:]
    if name.startswith("i") and name[1:] in ("add", "mul", "sub"):
        name = name[1:]
    return _SYNONYMS.get(name, name)


def interpolate_name(args: tuple, kwargs: dict) -> str:
    """The op name of the ATen op an ``F.interpolate`` / ``nn.Upsample`` call is captured as (the function mode sees
    ``interpolate`` itself): ``'upsample_bilinear2d'`` for a bilinear resize of a 4-D tensor, matching :func:`op_name`.

    Example:

    >>> import torch
    >>> interpolate_name((torch.zeros(1, 2, 4, 4),), {'scale_factor': 2.0, 'mode': 'bilinear'})
    'upsample_bilinear2d'
    """
    mode = args[3] if len(args) > 3 else kwargs.get("mode", "nearest")
    return f"upsample_{mode.replace('-', '_')}{args[0].dim() - 2}d"


def tensor_keys(captured: CapturedGraph) -> dict[str, str]:
    """Node name -> :func:`tensor_key` for every call node of ``captured``."""
    counters: dict[tuple[str, int, str], int] = defaultdict(int)
    keys = {}
    for node in captured.call_nodes():
        path, call, op = captured.module_path(node), captured.call_index(node), op_name(node)
        k = counters[(path, call, op)]
        counters[(path, call, op)] += 1
        keys[node.name] = f"{path}/{call}/{op}/{k}"
    return keys


def tensor_key(captured: CapturedGraph, node: torch.fx.Node) -> str:
    """The name of ``node``'s output in the calibration's ``graph`` table."""
    return tensor_keys(captured)[node.name]


class End(NamedTuple):
    """Where one call of a fused kernel ends (its output is quantized there): the tail module and its call, or, for
    a functional activation (``F.relu``, ``clamp``, ``hardtanh``, in whole-graph mode), that node's tensor key and
    name in the capture (the module is then the one calling it)."""

    module: str
    call: int
    key: str | None = None
    node: str | None = None


@dataclass
class Fusion:
    """A weighted layer and what the target fuses into it, on each of its calls.

    Attributes:
        layer: the weighted layer (conv / linear).
        bn: BatchNorm module folded into the layer (the same module after every call of it).
        activation: ``'relu'`` / ``'relu6'`` fused (the same kind on every call).
        ends: per call of the layer, where the fused kernel ends.
    """

    layer: str
    bn: str | None = None
    activation: str | None = None
    ends: list[End] = field(default_factory=list)

    @property
    def tail(self) -> str | None:
        """The module whose output is the fused kernel's output (on the first call)."""
        return self.ends[0].module if self.ends else None


@dataclass
class GraphPlan:
    """What the quantizer learned from the captured graph."""

    calls: dict[str, int] = field(default_factory=dict)
    fusions: dict[str, Fusion] = field(default_factory=dict)
    tail_calls: dict[str, int] = field(default_factory=dict)
    captured: CapturedGraph | None = None
    graph: dict[str, Any] = field(default_factory=dict)   # tensor key -> GraphTensor (whole-graph mode)
    owners: dict[str, str] = field(default_factory=dict)  # node name -> 'layer:<name>' / 'graph:<key>'
    fused_activations: dict[str, str] = field(default_factory=dict)  # add / mul key -> key of the ReLU fused into it
    tail_keys: dict[str, tuple[str, int]] = field(default_factory=dict)  # functional tail key -> (layer, its call)
    functional_layers: set[str] = field(default_factory=set)  # keys of F.linear / F.conv* calls on constant weights


def _single_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _layer_module(modules: dict[str, nn.Module], path: str) -> nn.Module | None:
    """The layer at ``path``: the module a slimkit wrapper holds (a pruner's, when a quantizer plans on a pruned
    model), else the module itself."""
    module = modules.get(path)
    return module.module if isinstance(module, CompressionWrapper) else module


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def activation_kind(node: torch.fx.Node) -> str | None:
    """``'relu'`` / ``'relu6'`` when ``node`` computes one (``relu``, ``relu6``, ``hardtanh(0, 6)``,
    ``clamp(0)``, ``clamp(0, 6)``, ``clamp_min(0)``, in-place forms too), else None: what an int8 kernel fuses.

    Example:

    >>> import torch
    >>> from slimkit.frameworks.torch.graph import capture_graph
    >>> class Activations(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.clamp(x, 0, 6) + torch.clamp(x, min=0) + torch.nn.functional.hardtanh(x) + x.relu()
    >>> [activation_kind(n) for n in capture_graph(Activations(), (torch.randn(2),)).call_nodes()]
    ['relu6', 'relu', None, None, None, 'relu', None]
    """
    name = op_name(node)
    if name in ("relu", "relu6"):
        return name
    args = list(node.args[1:])
    if name == "hardtanh":
        low, high = (args + [-1.0, 1.0][len(args):])[:2]
        low, high = node.kwargs.get("min_val", low), node.kwargs.get("max_val", high)
    elif name in ("clamp", "clip", "clamp_min"):
        low = node.kwargs.get("min", args[0] if args else None)
        high = None if name == "clamp_min" else node.kwargs.get("max", args[1] if len(args) > 1 else None)
    else:
        return None
    if _number(low) != 0.0:
        return None
    return "relu" if high is None else "relu6" if _number(high) == 6.0 else None


def _chain(captured: CapturedGraph, node: torch.fx.Node, modules: dict, functional: bool) -> tuple:
    """``(bn node, activation node, activation kind)`` after one call of a weighted layer (each None if absent):
    a BatchNorm module that is its only user, then a ReLU / ReLU6 (module, or a function when ``functional``)."""
    bn = act = kind = None
    nxt = _single_user(node)
    if nxt is not None and op_name(nxt) in _BN and isinstance(modules.get(captured.module_path(nxt)),
                                                               nn.modules.batchnorm._BatchNorm):
        bn, nxt = nxt, _single_user(nxt)
    if nxt is not None and activation_kind(nxt) is not None:
        module = modules.get(captured.module_path(nxt))
        if isinstance(module, _ACT_MODULES) or functional:
            act, kind = nxt, activation_kind(nxt)
    return bn, act, kind


def _fusion(captured: CapturedGraph, path: str, nodes: list, modules: dict, result: GraphPlan,
            layer_names: set[str], fold_bn: bool, whole_graph: bool) -> Fusion | None:
    """The fusion of layer ``path`` (``nodes``: its weighted op on each call), or None: every call must fuse the same
    BatchNorm module (called once after each of them, so that it folds into the weight) and the same activation."""
    keys = tensor_keys(captured) if whole_graph else {}
    chains = [_chain(captured, node, modules, whole_graph) for node in nodes]
    bns = {captured.module_path(bn) if bn is not None else None for bn, _, _ in chains}
    kinds = {kind for _, _, kind in chains}
    if len(bns) != 1 or len(kinds) != 1:
        return None
    bn_path, kind = bns.pop(), kinds.pop()
    if bn_path is not None and (result.calls.get(bn_path, 1) != len(nodes) or not isinstance(
            _layer_module(modules, path), (nn.Conv1d, nn.Conv2d, nn.Conv3d))):
        return None  # a BatchNorm that also runs elsewhere, or after a layer it cannot fold into
    fusion = Fusion(path, bn_path if fold_bn else None, kind)
    for bn, act, _ in chains:
        tail = act if act is not None else bn
        if tail is None:
            return None
        module = captured.module_path(tail)
        if module in layer_names:
            return None
        functional = act is not None and not isinstance(modules.get(module), _ACT_MODULES)
        fusion.ends.append(End(module, captured.call_index(tail), keys[tail.name] if functional else None,
                               tail.name if functional else None))
    return fusion


def plan(model: nn.Module, dummy_input: Any, layer_names: set[str], *, fold_bn: bool,
         whole_graph: bool = False) -> GraphPlan:
    """Capture ``model`` and find fusions and call counts for the selected ``layer_names``."""
    captured = capture_graph(model, dummy_input)
    modules = dict(model.named_modules())
    call_sets: dict[str, set[int]] = defaultdict(set)
    for node in captured.call_nodes():
        call_sets[captured.module_path(node)].add(captured.call_index(node))
    result = GraphPlan(calls={path: len(calls) for path, calls in call_sets.items()}, captured=captured)
    weighted: dict[str, list[torch.fx.Node]] = defaultdict(list)
    for node in captured.call_nodes():
        path = captured.module_path(node)
        if path in layer_names and op_name(node) in _WEIGHTED:
            weighted[path].append(node)
    for path, nodes in weighted.items():
        if len(nodes) != result.calls.get(path, 1):
            continue
        fusion = _fusion(captured, path, nodes, modules, result, layer_names, fold_bn, whole_graph)
        if fusion is None:
            continue
        result.fusions[path] = fusion
        for call, end in enumerate(fusion.ends):
            if end.key is not None:
                result.tail_keys[end.key] = (path, call)
            else:
                result.tail_calls[end.module] = result.calls.get(end.module, 1)
    if whole_graph:
        plan_graph_tensors(result, layer_names)
    return result


_SKIP_OPS = {"size", "sym_size", "getitem", "dim", "numel"}


def _functional_layer(node: torch.fx.Node, live: set[str]) -> bool:
    """``F.linear`` / ``F.conv1d`` / ``F.conv2d`` outside any layer whose weight is a constant of the deployed model
    (a parameter, or one seen through ``.t()`` / a view): the file runs it as an int8 kernel."""
    return op_name(node) in ("linear", "conv1d", "conv2d") and len(node.args) > 1 and isinstance(
        node.args[1], torch.fx.Node) and node.args[1].name not in live


def plan_graph_tensors(result: GraphPlan, layer_names: set[str]) -> None:
    """Fill ``result.graph`` with every float tensor outside the wrapped layers and fused kernels."""
    captured = result.captured
    keys = tensor_keys(captured)
    internal: set[str] = set()
    owners: dict[str, str] = {}
    chain_of_tail: dict[tuple[str, int], str] = {(end.module, end.call): name for name, f in result.fusions.items()
                                                 for end in f.ends if end.key is None}
    for name, fusion in result.fusions.items():
        owners.update({end.node: f"layer:{name}" for end in fusion.ends if end.node is not None})
    for node in captured.call_nodes():
        path = captured.module_path(node)
        if path in layer_names or any(path.startswith(name + ".") for name in layer_names):
            owners[node.name] = f"layer:{path.split('.module')[0] if path not in layer_names else path}"
            continue
        head = chain_of_tail.get((path, captured.call_index(node)))
        if head is not None and (op_name(node) in _BN or activation_kind(node) is not None):
            owners[node.name] = f"layer:{head}"
            continue
    # nodes between a fused head and its tail (the BN of a conv+BN+ReLU) are internal
    for name, fusion in result.fusions.items():
        for node in captured.call_nodes():
            if captured.module_path(node) == fusion.bn and fusion.tail != fusion.bn:
                internal.add(node.name)
                owners[node.name] = f"layer:{name}"
    # add / mul / a standalone BatchNorm / a functional layer followed only by a ReLU: the target fuses the
    # activation, quantize after it
    live = input_dependent(captured)
    for node in captured.call_nodes():
        if node.name in owners:
            continue
        user = _single_user(node)
        if _functional_layer(node, live):  # F.linear(x, self.weight): the weight quantized as a layer's
            result.functional_layers.add(keys[node.name])
        fuses = op_name(node) in _FUSES_ACTIVATION or keys[node.name] in result.functional_layers
        if fuses and user is not None and activation_kind(user) is not None:
            internal.add(node.name)
            result.fused_activations[keys[node.name]] = keys[user.name]
    for index, node in enumerate(captured.user_inputs()):
        key = f"input/{index}"
        owners[node.name] = f"graph:{key}"
        result.graph[key] = GraphTensor(key, "input", node.name, "", 0)
    masks = mask_arithmetic(captured, live)
    for node in captured.call_nodes():
        if node.name in owners or node.name in internal or node.name not in live or node.name in masks:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or op_name(node) in _SKIP_OPS:
            continue
        key = keys[node.name]
        owners[node.name] = f"graph:{key}"
        result.graph[key] = GraphTensor(key, OP_KINDS.get(op_name(node), op_name(node)), node.name,
                                        captured.module_path(node), captured.call_index(node))
    for tensor in result.graph.values():
        node = next((n for n in captured.graph.nodes if n.name == tensor.node), None)
        if node is None or tensor.kind == "input":
            continue
        args = node.args[0] if tensor.kind == "cat" and node.args and isinstance(node.args[0], (list, tuple)) \
            else node.args
        producers = [a for a in args if isinstance(a, torch.fx.Node) and a.name not in captured.state_names]
        # the ReLU ending a fused kernel (add + ReLU, F.relu(F.linear(...))) reads no quantized tensor of its own
        fused = tensor.kind in ("relu", "relu6") and any(a.name in internal for a in producers)
        tensor.inputs = [None if fused else _owner(a, owners, internal) for a in producers]
    result.owners = owners


def input_dependent(captured: CapturedGraph) -> set[str]:
    """Names of the nodes whose value depends on a model input. The others (positions, causal masks, relative
    position buckets, rotary tables: arithmetic on shapes, constants and buffers) are constants of the deployed
    model, folded at conversion; fake-quantizing them would also corrupt the integer indices some of them become.

    Example:

    >>> import torch
    >>> from slimkit.frameworks.torch.graph import capture_graph
    >>> class Positions(torch.nn.Module):
    ...     def forward(self, x):
    ...         return x + torch.arange(x.shape[-1], dtype=x.dtype) * 0.5
    >>> captured = capture_graph(Positions(), (torch.randn(1, 4),))
    >>> keys = tensor_keys(captured)
    >>> sorted(keys.values()), sorted(keys[name] for name in input_dependent(captured) if name in keys)
    (['/0/add/0', '/0/arange/0', '/0/mul/0'], ['/0/add/0'])
    """
    live = {node.name for node in captured.user_inputs()}
    for node in captured.call_nodes():
        if any(arg.name in live for arg in node.all_input_nodes):
            live.add(node.name)
    return live


def _is_float(node: torch.fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def mask_arithmetic(captured: CapturedGraph, live: set[str]) -> set[str]:
    """Names of the input-dependent float nodes that stay float in whole-graph mode: masks computed from the model
    inputs only through booleans and integers (token ids compared with the pad id, cast to float, scaled by a fill
    such as ``finfo.min``), and the ops that apply such a mask to an activation (``scores + mask``, the masked
    mean pooling). A mask's two values, 0 and a fill near -3.4e38, would take an int8 grid whose step swamps every
    activation added to it; in float the deployed model masks exactly. Activations start at the float model inputs
    and at ops reading a float parameter with input-dependent indices (embeddings).

    Example:

    >>> import torch
    >>> from slimkit.frameworks.torch.graph import capture_graph
    >>> class Masked(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.embed = torch.nn.Embedding(10, 4)
    ...     def forward(self, ids):
    ...         fill = (ids == 0).to(torch.float32) * torch.finfo(torch.float32).min
    ...         return (self.embed(ids).sum(-1) + fill).softmax(-1)
    >>> captured = capture_graph(Masked(), (torch.tensor([[3, 1, 0]]),))
    >>> keys = tensor_keys(captured)
    >>> sorted(keys[name] for name in mask_arithmetic(captured, input_dependent(captured)))
    ['/0/add/0', '/0/mul/0', '/0/to/0']
    """
    data = {node.name for node in captured.user_inputs() if _is_float(node)}
    masks: set[str] = set()
    applied: set[str] = set()
    for node in captured.call_nodes():
        if node.name not in live:
            continue
        args = node.all_input_nodes
        reads_parameter = any(a.name in captured.state_names and _is_float(a) for a in args)
        if any(a.name in data for a in args) or (reads_parameter and any(a.name in live for a in args)):
            data.add(node.name)  # activations, and what carries them (the list a split / chunk returns)
            if _is_float(node) and any(a.name in masks for a in args):
                applied.add(node.name)  # applies a mask: its output holds the fill
        elif _is_float(node):
            masks.add(node.name)
    return masks | applied


def _owner(node: torch.fx.Node, owners: dict[str, str], internal: set[str]) -> str | None:
    while node.name in internal and node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return owners.get(node.name)
