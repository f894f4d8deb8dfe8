"""Lowering: walk the captured ATen graph once and emit IR operators through the registry.

Constant subgraphs (nodes whose inputs are all parameters or Python values) are evaluated with
PyTorch on the spot (constant folding), so only ops on the data path need converters. Every op
that has no converter is collected first and reported together, before anything is written.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch

from slimkit.converter import layout
from slimkit.converter.ir import Graph, Op, Tensor
from slimkit.converter.ops.dtypes import TORCH_NAMES
from slimkit.converter.ops.quantize import FAKE_QUANT, record_folded
from slimkit.converter.options import ConverterOptions
from slimkit.converter.quant import QuantTable
from slimkit.converter.registry import CONVERTERS
from slimkit.errors import UnsupportedOpError

DOCS = "docs/converter.md"


# Pure aliases: the output is the input.
PASS_THROUGH = {
    "aten.dropout.default", "aten.clone.default", "aten.contiguous.default", "aten.alias.default",
    "aten.detach.default", "aten.detach_.default", "aten.feature_dropout.default", "aten.lift_fresh_copy.default",
    "aten.alpha_dropout.default", "aten.dropout_.default", "aten.feature_dropout_.default",
    "aten.alpha_dropout_.default",
}
# Nodes that produce nothing on the data path.
IGNORED = {"aten._assert_tensor_metadata.default", "aten._assert_async.msg",
           "aten.sym_constrain_range_for_size.default", "aten._assert_scalar.default"}


def target_name(node: torch.fx.Node) -> str:
    target = node.target
    if target is operator.getitem:
        return "getitem"
    return str(target)


def function_name(node: torch.fx.Node | None) -> str:
    """The PyTorch function a node calls, without namespace, overload, private or in-place mark (``'layer_norm'`` for
    ``aten.layer_norm.default``, ``'add'`` for ``aten.add_.Tensor``, ``'softmax'`` for ``aten._softmax``); '' for no
    node."""
    if node is None:
        return ""
    name = str(getattr(node.target, "__name__", node.target))
    name = name.split(".")[1] if name.startswith("aten.") else name.split(".")[0]
    return name if name.endswith("__") else name.strip("_")


_SCHEMAS: dict[Any, list[tuple[str, Any]]] = {}


def normalised_args(node: torch.fx.Node, resolve) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in, fx nodes resolved by ``resolve``."""
    target = node.target
    spec = _SCHEMAS.get(target)
    if spec is None:
        spec = [(a.name, a.default_value if a.has_default_value() else None)
                for a in target._schema.arguments]
        _SCHEMAS[target] = spec
    out = {}
    args = node.args
    for i, (name, default) in enumerate(spec):
        if i < len(args):
            out[name] = resolve(args[i])
        elif name in node.kwargs:
            out[name] = resolve(node.kwargs[name])
        else:
            out[name] = default
    return out


class Lowering:
    """State of one conversion: the values of fx nodes and the IR being built."""

    def __init__(self, captured, options: ConverterOptions):
        self.captured = captured
        self.options = options
        self.graph = Graph()
        self.values: dict[str, Any] = {}
        self.node: torch.fx.Node | None = None
        self.source = ""
        self._names: dict[str, int] = {}  # base -> next suffix to try
        self._used: set[str] = set()
        self._transposes: dict[tuple[int, tuple[int, ...]], Tensor] = {}
        self.quant_table = QuantTable()  # activation tensor name -> QuantParams
        self.weight_quant: dict[int, Any] = {}  # id(folded torch tensor) -> QuantParams

    # ---- naming and tensor creation -------------------------------------------------------
    def unique(self, base: str) -> str:
        """``base``, or ``base_<n>`` with the first ``n`` no tensor holds yet (fx names its nodes ``add``,
        ``add_1``, ...: a second tensor from node ``add`` must not take node ``add_1``'s name)."""
        n = self._names.get(base, 0)
        name = base if n == 0 else f"{base}_{n}"
        while name in self._used:
            n += 1
            name = f"{base}_{n}"
        self._names[base] = n + 1
        self._used.add(name)
        return name

    def tensor(self, shape, dtype="float32", perm=None, name=None) -> Tensor:
        return Tensor(self.unique(name or (self.node.name if self.node is not None else "t")), shape, dtype,
                      perm=perm)

    def const(self, array, name=None, dtype=None) -> Tensor:
        """A constant tensor (``array`` is already in the layout the file wants)."""
        array = np.asarray(array)
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        elif array.dtype == np.float64:
            array = array.astype(np.float32)
        elif array.dtype == np.bool_:
            pass
        return Tensor(self.unique(name or f"{self.node.name if self.node is not None else 'c'}_const"),
                      array.shape, str(array.dtype), data=array)

    def emit(self, code: str, inputs, outputs, **options) -> Op:
        op = Op(code, list(inputs), list(outputs), options, self.source, origin=function_name(self.node))
        for t in op.outputs:
            t.producer = op
        self.graph.ops.append(op)
        return op

    def out_like(self, node=None, perm=None, index=None) -> Tensor:
        """An output tensor with the fx node's shape/dtype (``index`` for multi-output nodes)."""
        val = (node or self.node).meta["val"]
        if index is not None:
            val = val[index]
        return self.tensor(tuple(val.shape), TORCH_NAMES.get(val.dtype, "float32"), perm)

    # ---- arguments ------------------------------------------------------------------------
    def resolve(self, arg):
        if isinstance(arg, torch.fx.Node):
            return self.values[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.resolve(a) for a in arg)
        return arg

    def as_tensor(self, value, dtype="float32") -> Tensor:
        """An IR tensor for an activation, a torch constant or a Python scalar (logical layout)."""
        if isinstance(value, Tensor):
            return value
        if isinstance(value, torch.Tensor):
            array = value.detach().cpu().numpy()
            if array.dtype == np.float64:
                array = array.astype(np.float32)
            return self.const(array)
        return self.const(np.asarray(value, dtype=dtype))

    def layout(self, t: Tensor, perm) -> Tensor:
        """``t`` stored in axis order ``perm`` (a TRANSPOSE is emitted once per tensor and order)."""
        return layout.to_order(self, t, perm)

    def fail(self, why: str):
        raise UnsupportedOpError(f"{target_name(self.node)} at {self.source or '<root>'}: {why}")

    # ---- main walk ------------------------------------------------------------------------
    def check_supported(self) -> None:
        dynamic = {n.name for n in self.captured.user_inputs()}
        missing: list[str] = []
        for node in self.captured.call_nodes():
            inputs = [a.name for a in node.all_input_nodes]
            if not any(i in dynamic for i in inputs):
                continue
            if isinstance(node.meta.get("val"), (torch.Tensor, list, tuple)):
                dynamic.add(node.name)  # a shape read (sym_size) gives a Python int: what uses it is folded
            name = target_name(node)
            if name in CONVERTERS or name in PASS_THROUGH or name in IGNORED or name == "getitem":
                continue
            missing.append(f"{name} (at {self.captured.module_path(node) or '<root>'}, node {node.name})")
        if missing:
            raise UnsupportedOpError(
                f"{len(missing)} operator(s) have no TFLite converter:\n  " + "\n  ".join(missing)
                + f"\nExpected ops listed in {DOCS} (section 'Supported operators'). Rewrite these calls with "
                "supported ops, exclude the submodule, or add a converter with "
                "@slimkit.converter.registry.register (see " + DOCS + ").")

    def run(self) -> Graph:
        self.check_supported()
        cap = self.captured
        opts = self.options
        inputs = cap.user_inputs()
        for node in cap.graph.nodes:
            if node.op != "placeholder":
                continue
            if node.name in cap.state_names:
                self.values[node.name] = cap.tensor(node)
        self.node = None
        for i, node in enumerate(inputs):
            val = node.meta["val"]
            if not isinstance(val, torch.Tensor):
                raise UnsupportedOpError(f"Expected tensor model inputs. Received: input {i} = {type(val).__name__}")
            perm = layout.channels_last_order(val.dim()) if opts.transposes_input(i, val.dim()) else None
            t = Tensor(self.unique(node.name), tuple(val.shape), TORCH_NAMES.get(val.dtype, "float32"), perm=perm)
            self.values[node.name] = t
            self.graph.inputs.append(t)

        errors: list[str] = []
        for node in cap.graph.nodes:
            if node.op != "call_function":
                continue
            self.node = node
            self.source = cap.module_path(node)
            name = target_name(node)
            if name == "getitem":
                self.values[node.name] = self.resolve(node.args[0])[node.args[1]]
                continue
            args = [self.resolve(a) for a in node.args]
            kwargs = {k: self.resolve(v) for k, v in node.kwargs.items()}
            if not _has_tensor((args, kwargs)):
                # constant folding with PyTorch itself
                with torch.no_grad():
                    self.values[node.name] = node.target(*args, **kwargs)
                if name in FAKE_QUANT:
                    record_folded(self, node, args, self.values[node.name])
                continue
            if name in IGNORED:
                self.values[node.name] = None
                continue
            if name in PASS_THROUGH:
                self.values[node.name] = args[0]
                continue
            try:
                result = CONVERTERS[name].fn(self, node, normalised_args(node, self.resolve))
            except UnsupportedOpError as error:
                errors.append(str(error))
                result = _placeholder_result(self, node)
            self.values[node.name] = result
        self.graph.quant_table = self.quant_table
        if errors:
            raise UnsupportedOpError(
                f"{len(errors)} operator(s) could not be converted:\n  " + "\n  ".join(errors)
                + f"\nSee {DOCS} for what each converter supports.")

        self.node = None
        out_node = next(n for n in cap.graph.nodes if n.op == "output")
        flat = _flatten(out_node.args[0])
        for i, arg in enumerate(flat):
            value = self.resolve(arg)
            constant = not isinstance(value, Tensor) or value.is_const
            if constant and not opts.missing_outputs_as_constants:
                continue
            if not isinstance(value, Tensor):
                value = self.as_tensor(value)
            want = layout.channels_last_order(value.rank) if opts.transposes_output(i, value.rank) else None
            self.graph.outputs.append(self.layout(value, want or tuple(range(value.rank))))
        return self.graph


def _has_tensor(obj) -> bool:
    if isinstance(obj, Tensor):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_tensor(o) for o in obj.values())
    return False


def _flatten(obj):
    if isinstance(obj, (list, tuple)):
        out = []
        for o in obj:
            out.extend(_flatten(o))
        return out
    return [obj] if obj is not None else []


def _placeholder_result(ctx: Lowering, node):
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return tuple(ctx.out_like(node, index=i) for i in range(len(val)))
    if isinstance(val, torch.Tensor):
        return ctx.out_like(node)
    return None
