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
from typing import Any

import torch
from torch import nn

from slimkit.frameworks.torch.graph import CapturedGraph, capture_graph

_WEIGHTED = {"conv1d", "conv2d", "conv3d", "linear", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_BN = {"batch_norm", "native_batch_norm_legit_no_training"}
_ACTIVATIONS = {"relu": "relu", "relu6": "relu6", "hardtanh": "relu6"}
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


@dataclass
class Fusion:
    """A weighted layer and what the target fuses into it."""

    layer: str
    bn: str | None = None           # BatchNorm module folded into the layer
    tail: str | None = None         # module whose output is the fused kernel's output
    tail_call: int = 0              # which call of ``tail``
    activation: str | None = None   # 'relu' / 'relu6' fused


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


def _single_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def plan(model: nn.Module, dummy_input: Any, layer_names: set[str], *, fold_bn: bool,
         whole_graph: bool = False) -> GraphPlan:
    """Capture ``model`` and find fusions and call counts for the selected ``layer_names``."""
    captured = capture_graph(model, dummy_input)
    modules = dict(model.named_modules())
    call_sets: dict[str, set[int]] = defaultdict(set)
    for node in captured.call_nodes():
        call_sets[captured.module_path(node)].add(captured.call_index(node))
    result = GraphPlan(calls={path: len(calls) for path, calls in call_sets.items()}, captured=captured)
    for node in captured.call_nodes():
        path = captured.module_path(node)
        if path not in layer_names or op_name(node) not in _WEIGHTED or result.calls.get(path, 1) > 1:
            continue
        fusion = Fusion(path)
        current = node
        nxt = _single_user(current)
        if (nxt is not None and op_name(nxt) in _BN and isinstance(modules.get(captured.module_path(nxt)),
                                                                     nn.modules.batchnorm._BatchNorm)
                and result.calls.get(captured.module_path(nxt), 1) == 1
                and isinstance(modules.get(path), (nn.Conv1d, nn.Conv2d, nn.Conv3d))):
            if fold_bn:
                fusion.bn = captured.module_path(nxt)
            fusion.tail, fusion.tail_call = captured.module_path(nxt), captured.call_index(nxt)
            current = nxt
            nxt = _single_user(current)
        if (nxt is not None and op_name(nxt) in _ACTIVATIONS
                and isinstance(modules.get(captured.module_path(nxt)), _ACT_MODULES)):
            fusion.tail, fusion.tail_call = captured.module_path(nxt), captured.call_index(nxt)
            fusion.activation = _ACTIVATIONS[op_name(nxt)]
        if fusion.tail is not None and fusion.tail not in layer_names:
            result.fusions[path] = fusion
            result.tail_calls[fusion.tail] = result.calls.get(fusion.tail, 1)
    if whole_graph:
        plan_graph_tensors(result, layer_names)
    return result


@dataclass
class GraphTensor:
    """A tensor of the captured graph that will be integer in the deployed model (whole-graph mode).

    Attributes:
        key: its :func:`tensor_key` (``'input/<i>'`` for model inputs).
        kind: canonical op kind (``'add'``, ``'cat'``, ``'max_pool'`` ...).
        node: the node's name in the capture.
        inputs: owners of its tensor inputs: ``'layer:<name>'`` or ``'graph:<key>'`` (None if unknown).
    """

    key: str
    kind: str
    node: str
    module: str = ""
    call_index: int = 0
    inputs: list = field(default_factory=list)


_SKIP_OPS = {"size", "sym_size", "getitem", "dim", "numel"}


def plan_graph_tensors(result: GraphPlan, layer_names: set[str]) -> None:
    """Fill ``result.graph`` with every float tensor outside the wrapped layers and fused kernels."""
    captured = result.captured
    keys = tensor_keys(captured)
    internal: set[str] = set()
    owners: dict[str, str] = {}
    chain_of_tail: dict[tuple[str, int], str] = {f.tail and (f.tail, f.tail_call): name
                                                 for name, f in result.fusions.items()}
    for node in captured.call_nodes():
        path = captured.module_path(node)
        if path in layer_names or any(path.startswith(name + ".") for name in layer_names):
            owners[node.name] = f"layer:{path.split('.module')[0] if path not in layer_names else path}"
            continue
        head = chain_of_tail.get((path, captured.call_index(node)))
        if head is not None and op_name(node) in (_BN | set(_ACTIVATIONS)):
            owners[node.name] = f"layer:{head}"
            continue
    # nodes between a fused head and its tail (the BN of a conv+BN+ReLU) are internal
    for name, fusion in result.fusions.items():
        for node in captured.call_nodes():
            if captured.module_path(node) == fusion.bn and fusion.tail != fusion.bn:
                internal.add(node.name)
                owners[node.name] = f"layer:{name}"
    # add / mul followed only by a ReLU: the target fuses the activation, quantize after it
    for node in captured.call_nodes():
        if node.name in owners:
            continue
        user = _single_user(node)
        if op_name(node) in ("add", "sub", "mul") and user is not None and op_name(user) in _ACTIVATIONS:
            internal.add(node.name)
            result.fused_activations[keys[node.name]] = keys[user.name]
    for index, node in enumerate(captured.user_inputs()):
        key = f"input/{index}"
        owners[node.name] = f"graph:{key}"
        result.graph[key] = GraphTensor(key, "input", node.name, "", 0)
    live = input_dependent(captured)
    for node in captured.call_nodes():
        if node.name in owners or node.name in internal or node.name not in live:
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
        tensor.inputs = [_owner(a, owners, internal) for a in producers]
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


def _owner(node: torch.fx.Node, owners: dict[str, str], internal: set[str]) -> str | None:
    while node.name in internal and node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return owners.get(node.name)
