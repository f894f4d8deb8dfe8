"""Whole-graph fake quantization at run time, keyed like the captured graph.

With ``op_types: ['default']`` and a ``dummy_input``, every tensor the deployed model will hold
as integers gets parameters, not only module outputs: functional ``+``, ``*``, ``torch.cat``,
``mean``, pooling, reshapes, and the model inputs. The plan (which tensors, their op kinds and
producers) comes from :mod:`slimkit.frameworks.torch.quant_graph`; at run time a
``TorchFunctionMode`` sees each torch-level call, names it with the same
``"<module_path>/<call_index>/<op>/<k>"`` key (module path and call index tracked with module
hooks) and fake-quantizes the output of the calls the plan lists. The mode is switched off while a module
whose subtree holds no planned tensor runs (a fused conv/BN/ReLU block, an inverted residual's branch): there
it would only count calls.

An in-place op (``x += y``, ``x.add_(y)``) runs as its out-of-place twin on the inputs as they were, and the
(fake-quantized or integer-emulated) result is copied into ``x``. Calls made by wrapped layers and by the quantizer
itself are not counted.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from slimkit.frameworks.torch import int8_emulation
from slimkit.frameworks.torch.quant_graph import OP_KINDS, GraphPlan, function_name, interpolate_name

_SPLITS = frozenset({"split", "split_with_sizes", "tensor_split", "chunk", "unbind"})


#: torch-level calls that only select or move values: an unplanned result keeps its input's grid (the capture names
#: ``x[:, 0]`` ``select``, the runtime sees ``__getitem__``)
_MOVES = frozenset({"getitem", "select", "narrow", "view", "reshape", "flatten", "squeeze", "unsqueeze", "permute",
                    "transpose", "contiguous", "clone", "expand", "movedim"})


class _Mode(TorchFunctionMode):
    def __init__(self, runtime: GraphRuntime):
        super().__init__()
        self.runtime = runtime

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        args = self.runtime.functional_weight(func, args)
        functional = self.runtime.out_of_place(func)
        if functional is None or not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            return self.runtime.on_call(func, args, func(*args, **kwargs), kwargs)
        # ``x += y`` / ``x.add_(y)``: computed as ``x + y`` from the inputs as they were, the (fake-quantized or
        # emulated) result then written into ``x``, so that ``x`` holds what the file's ADD outputs
        target = args[0]
        if target.requires_grad and torch.is_grad_enabled():  # autograd may keep the input; the copy overwrites it
            args = (self.runtime.alias(target.clone(), target), *args[1:])
        result = self.runtime.on_call(functional, args, functional(*args, **kwargs), kwargs)
        target.copy_(result)
        return self.runtime.alias(target, result)


class GraphRuntime:
    """Module-path tracking, tensor bookkeeping and the function mode for one quantized model."""

    def __init__(self, model: nn.Module, quantizer: Any, plan: GraphPlan, wrapped: set[str]):
        self.model, self.quantizer, self.plan, self.wrapped = model, quantizer, plan, wrapped
        self.stack: list[tuple[str, int]] = []
        self.calls: dict[str, int] = defaultdict(int)
        self.ops: dict[tuple[str, int, str], int] = defaultdict(int)
        self.tensors: dict[int, tuple[torch.Tensor, Any]] = {}
        self.mode: _Mode | None = None
        self.handles: list[Any] = []
        self.seen: set[str] = set()
        self.names: dict[Any, str] = {}  # torch function -> function_name(), computed once per function
        self.functional: dict[Any, Any] = {}  # torch function -> its out-of-place twin (None: not in place)
        self.silenced = 0  # depth in ``stack`` of the module the mode was switched off for (0: none)
        self.layers: dict[str, Any] = {}  # layer name -> the quantizer's layer, for fused functional ends
        self.weight_params: dict[str, Any] = {}  # key of a functional layer's call -> its weight's parameters

    def __deepcopy__(self, memo: dict) -> GraphRuntime:
        return self  # copies of the model (export) share the runtime: hooks are keyed by path

    # ---------------------------------------------------------------- installation
    def install(self) -> None:
        self.handles.append(self.model.register_forward_pre_hook(self._root_pre, prepend=True))
        # always_call: a forward that raises (model code failing mid-call) still leaves the function mode
        self.handles.append(self.model.register_forward_hook(self._root_post, always_call=True))
        planned = {tensor.module for tensor in self.plan.graph.values()}
        # fused ends the mode computes too: an add / BatchNorm before its ReLU, a functional ReLU ending a layer
        planned |= {key.rsplit("/", 3)[0] for key in (*self.plan.fused_activations, *self.plan.tail_keys)}
        planned_under = {path[:end] for path in planned for end in range(len(path) + 1)
                         if end == len(path) or path[end] == "."}  # every planned module and its ancestors
        for name, module in self.model.named_modules():
            if not name:
                continue
            path = name[: -len(".module")] if name.endswith(".module") and name[: -len(".module")] in \
                self.wrapped else name
            self.handles.append(module.register_forward_pre_hook(self._pre(path, name == path,
                                                                           path not in planned_under)))
            self.handles.append(module.register_forward_hook(self._post(name == path)))
        self.quantizer.tensor_listener = self._layer_tensor

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self._exit()
        self.quantizer.tensor_listener = None

    # ---------------------------------------------------------------- hooks
    def _root_pre(self, module: nn.Module, args: tuple) -> tuple:
        self._exit()
        self.stack, self.tensors, self.silenced = [("", 0)], {}, 0
        self.calls.clear()
        self.ops.clear()
        quantized = []
        for index, arg in enumerate(args):
            if isinstance(arg, torch.Tensor) and arg.is_floating_point() and f"input/{index}" in self.plan.graph:
                arg = self._quantize(f"input/{index}", arg, "input", [], inputs=[])
            quantized.append(arg)
        self._enter()
        return tuple(quantized)

    def _root_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._exit()
        self.tensors = {}
        self.stack = []

    def _enter(self) -> None:
        self.mode = _Mode(self)
        self.mode.__enter__()

    def _exit(self) -> None:
        if self.mode is not None:
            mode, self.mode = self.mode, None
            mode.__exit__(None, None, None)

    def _pre(self, path: str, counts: bool, silent: bool) -> Any:
        """``silent``: no planned tensor in this module's subtree, so the mode is switched off until it returns."""
        def hook(module: nn.Module, args: tuple) -> None:
            if not self.stack:
                return
            if counts:
                index = self.calls[path]
                self.calls[path] += 1
            else:  # the module inside a wrapper: same path, same call as the wrapper
                index = self.stack[-1][1]
            self.stack.append((path, index))
            if silent and self.mode is not None and not torch.compiler.is_exporting():
                self._exit()
                self.silenced = len(self.stack)
        return hook

    def _post(self, counts: bool) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if len(self.stack) > 1:
                if self.silenced == len(self.stack):
                    self.silenced = 0
                    self._enter()
                self.stack.pop()
        return hook

    # ---------------------------------------------------------------- tensors
    def _layer_tensor(self, tensor: Any, layer_name: str, key: str) -> None:
        if isinstance(tensor, torch.Tensor) and self.stack:
            self.tensors[id(tensor)] = (tensor, self.quantizer.params[layer_name].get(key))

    def out_of_place(self, func: Any) -> Any:
        """The out-of-place twin of an in-place op the plan knows (``Tensor.add_`` -> ``Tensor.add``), else None."""
        if func in self.functional:
            return self.functional[func]
        name = getattr(func, "__name__", "")
        twin = None
        if name.endswith("_") and not name.startswith("_") and OP_KINDS.get(name[:-1]) is not None:
            owner = torch.Tensor if getattr(torch.Tensor, name, None) is func else torch
            twin = getattr(owner, name[:-1], None) if getattr(owner, name, None) is func else None
        self.functional[func] = twin
        return twin

    def functional_weight(self, func: Any, args: tuple) -> tuple:
        """``args`` of ``F.linear`` / ``F.conv1d`` / ``F.conv2d`` on a constant weight (one of the model's parameters,
        or a view of one: the plan's ``functional_layers``) with that weight on its int8 grid
        (:meth:`~slimkit.compression.Quantizer.graph_weight_params`, from the current weight on every eager call), as
        the file's int8 kernel holds it; other calls' ``args`` unchanged."""
        if len(args) < 2 or not isinstance(args[1], torch.Tensor) or not self.stack or self.quantizer._in_quant or \
                self.stack[-1][0] in self.wrapped or not self.plan.functional_layers:
            return args
        name = self.names.get(func)
        if name is None:
            name = self.names[func] = function_name(func)
        path, call = self.stack[-1]
        key = f"{path}/{call}/{name}/{self.ops[(path, call, name)]}"  # this call's key (on_call counts it)
        if key not in self.plan.functional_layers:
            return args
        if torch.compiler.is_exporting():  # fake weights: the parameters of the eager run just before the capture
            params = self.weight_params.get(key)
        else:
            params = self.weight_params[key] = self.quantizer.graph_weight_params(args[1])
        if params is None:
            return args
        self.quantizer._in_quant += 1
        try:
            weight = self.quantizer.ops.fake_quant(args[1], params)
        finally:
            self.quantizer._in_quant -= 1
        self.tensors[id(weight)] = (weight, params)
        return (args[0], weight, *args[2:])

    def alias(self, copy: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """``copy`` of ``tensor``, known to carry the same quantization parameters."""
        self.tensors[id(copy)] = (copy, self.params_of(tensor))
        return copy

    def params_of(self, tensor: Any) -> Any:
        entry = self.tensors.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def on_call(self, func: Any, args: tuple, out: Any, kwargs: dict | None = None) -> Any:
        if not self.stack or self.quantizer._in_quant or not isinstance(out, (torch.Tensor, tuple, list)):
            return out
        path, call = self.stack[-1]
        if path in self.wrapped:
            return out
        name = self.names.get(func)
        if name is None:
            name = self.names[func] = function_name(func)
        if name == "interpolate":
            name = interpolate_name(args, kwargs or {})
        if not isinstance(out, torch.Tensor):
            return self._pieces(name, args, out)
        counter = (path, call, name)
        k = self.ops[counter]
        self.ops[counter] = k + 1
        key = f"{path}/{call}/{name}/{k}"
        head = self.plan.tail_keys.get(key)
        if head is not None:  # a functional ReLU ending a fused conv / linear: the layer's output, on its call
            return self._layer_output(out, *head)
        tensor = self.plan.graph.get(key)
        emulating = self.quantizer.integer_arithmetic is not None
        fused_into = self.plan.fused_activations.get(key) if tensor is None and emulating else None
        if (tensor is None and fused_into is None) or not out.is_floating_point():
            return self._unplanned(name, args, out) if tensor is None else out
        first = args[0] if args else None
        sources = list(first) if isinstance(first, (list, tuple)) else [a for a in args if isinstance(
            a, torch.Tensor)]
        input_params = [self.params_of(t) for t in sources if isinstance(t, torch.Tensor)]
        if fused_into is not None:  # add + ReLU: one kernel, on the activation's output grid
            return self._integer(func, args, kwargs or {}, out, OP_KINDS.get(name, name), input_params,
                                 self.quantizer.graph_params.get(fused_into))
        if emulating:
            out = self._integer(func, args, kwargs or {}, out, tensor.kind, input_params,
                                self.quantizer.graph_params.get(key))
        return self._quantize(key, out, tensor.kind, input_params, inputs=tensor.inputs)

    def _pieces(self, name: str, args: tuple, out: tuple | list) -> tuple | list:
        """The tensors of a split / chunk / unbind hold their input's integers (one SPLIT in the file): they carry its
        parameters, so that the ops reading them (an add, a concatenation, a layer's input) know their grid."""
        params = self.params_of(args[0]) if name in _SPLITS and args else None
        if params is not None:
            for piece in out:
                if isinstance(piece, torch.Tensor):
                    self.tensors[id(piece)] = (piece, params)
        return out

    def _unplanned(self, name: str, args: tuple, out: torch.Tensor) -> torch.Tensor:
        """A call the plan holds no tensor for: one that only selects or moves values (``x[:, 0]``, a view) keeps its
        input's grid, in calibration, export and ``emulate_integer`` alike (an op reading it, a concatenation, then
        takes the same parameters in each)."""
        moves = name in _MOVES
        params = self.params_of(args[0]) if moves and args and isinstance(args[0], torch.Tensor) else None
        if params is not None:
            self.tensors[id(out)] = (out, params)
        return out
    def _layer_output(self, out: torch.Tensor, layer_name: str, call: int) -> torch.Tensor:
        layer = self.layers.get(layer_name)
        if layer is None:
            layer = self.layers[layer_name] = next(item for item in self.quantizer.layers if item.name == layer_name)
        return self.quantizer.forward_output(layer, out, call)

    @staticmethod
    def _integer(func: Any, args: tuple, kwargs: dict, out: torch.Tensor, kind: str, input_params: list,
                 params: Any) -> torch.Tensor:
        """Under ``emulate_integer``: the integer kernel's result (:func:`int8_emulation.kernel_of`) where the file runs
        one for this call; other ops keep their fake-quant value."""
        fn = int8_emulation.kernel_of(kind, params) if params is not None else None
        constants = kind in int8_emulation.CONSTANT_OPERANDS
        if fn is None or not input_params or (any(p is None for p in input_params) and not constants) or \
                all(p is None for p in input_params):
            return out
        result = fn(int8_emulation.Call(kind, func, args, kwargs, out, input_params, params))
        return out if result is None else result.to(out.dtype)

    def _quantize(self, key: str, out: torch.Tensor, kind: str, input_params: list, inputs: list) -> torch.Tensor:
        self.seen.add(key)
        graph_tensor = self.plan.graph[key]
        result = self.quantizer.quantize_graph_tensor(
            key, out, kind, input_params, inputs=inputs, node=graph_tensor.node, module=graph_tensor.module,
            call_index=graph_tensor.call_index)
        self.tensors[id(result)] = (result, self.quantizer.graph_params.get(key))
        return result
