"""ONNX export of a weight-only quantized model, the file storing the codes, not float weights, in one of two
formats (:data:`FORMATS`):

- ``'DequantizeLinear'`` (the default): each quantized Linear's weight as a blocked ``DequantizeLinear`` (opset 21)
  of int4 / uint4 codes (int8 / uint8 above 4 bits) with one scale (and zero point) per group of input features.
  The weight initializer is replaced by the DequantizeLinear of its codes (and, after AWQ, a Div by
  ``input_scale`` per input feature), under the same name, so every consumer of the weight reads the same values.
- ``'MatMulNBits'``: each product by the weight replaced by onnxruntime's ``com.microsoft`` MatMulNBits of the
  packed codes (2, 4 or 8 bits; see :mod:`slimkit.frameworks.torch.weight_only_nbits`).

The model is first exported with plain Linear layers whose weights are the grid values (without the exporter's
graph optimizer, which would fold a weight's Transpose into a new, unnamed initializer).

Example:

>>> import os, tempfile, torch, onnx
>>> from slimkit.algorithms.quantization import WeightOnlyQuantizer
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4))
>>> q = WeightOnlyQuantizer(model, [{'op_types': ['Linear'], 'group_size': 4}])
>>> model = q.compress()
>>> path = os.path.join(tempfile.mkdtemp(), 'int4.onnx')
>>> q.export_model(os.path.join(os.path.dirname(path), 'int4.pth'), onnx_path=path, dummy_input=torch.randn(1, 8))
>>> [(n.op_type, n.output[0]) for n in onnx.load(path).graph.node][:1]
[('DequantizeLinear', '0.weight')]
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import ConfigError, UnsupportedOpError
from slimkit.frameworks.torch.adapter import set_submodule
from slimkit.frameworks.torch.weight_only_nbits import DOMAIN, rewrite_matmul_nbits
from slimkit.utils.files import atomic_path

OPSET = 21
"""Blocked DequantizeLinear and 4-bit types need opset 21."""


def _code_array(codes: torch.Tensor, bits: int, signed: bool) -> np.ndarray:
    import ml_dtypes

    values = codes.cpu().numpy().astype(np.int16)
    if bits <= 4:
        return values.astype(ml_dtypes.int4 if signed else ml_dtypes.uint4)
    return values.astype(np.int8 if signed else np.uint8)


def plain_copy(model: nn.Module, wrappers: dict[str, Any]) -> nn.Module:
    """A copy of ``model`` with each weight-only wrapper replaced by its Linear holding the effective weight."""
    clone = copy.deepcopy(model)
    for name in wrappers:
        wrapper = clone.get_submodule(name)
        linear = wrapper.module
        with torch.no_grad():
            linear.weight.copy_(wrapper.native_weight())
        set_submodule(clone, name, linear)
    return clone


def _dequantize_nodes(name: str, wrapper: Any) -> tuple[list[Any], list[Any]]:
    """Initializers and nodes computing ``<name>.weight`` in the layer's own layout from its codes: blocks run
    along the input features (axis 1 of ``(out, in)``, axis 0 of a transposed ``(in, out)`` weight)."""
    from onnx import helper, numpy_helper

    grid = wrapper.grid
    native = (lambda t: t.T) if wrapper.transposed else (lambda t: t)
    codes_name, scale_name, zero_name = f"{name}.weight_codes", f"{name}.weight_scale", f"{name}.weight_zero_point"
    columns = wrapper.weight_codes.shape[1]
    block = columns if grid.group_size == -1 else grid.group_size
    initializers = [
        numpy_helper.from_array(_code_array(native(wrapper.weight_codes), grid.bits, grid.symmetric), codes_name),
        numpy_helper.from_array(native(wrapper.weight_scale).detach().cpu().numpy().astype(np.float32), scale_name),
        numpy_helper.from_array(_code_array(native(wrapper.weight_zero_point).round(), grid.bits, grid.symmetric),
                                zero_name),
    ]
    target = f"{name}.weight"
    scaled = wrapper.input_scale is not None
    dequantized = f"{target}.dequantized" if scaled else target
    nodes = [helper.make_node("DequantizeLinear", [codes_name, scale_name, zero_name], [dequantized],
                              name=f"{name}.dequantize", axis=0 if wrapper.transposed else 1, block_size=block)]
    if scaled:
        factors = f"{name}.input_scale"
        per_input = wrapper.input_scale.detach().cpu().numpy().astype(np.float32)
        initializers.append(numpy_helper.from_array(per_input[:, None] if wrapper.transposed else per_input[None, :],
                                                    factors))
        nodes.append(helper.make_node("Div", [dequantized, factors], [target], name=f"{name}.input_scale"))
    return initializers, nodes


def rewrite_dequantize_linear(graph: Any, name: str, wrapper: Any) -> None:
    """Replace layer ``name``'s weight initializer in ``graph`` by the blocked DequantizeLinear of its codes."""
    target = f"{name}.weight"
    graph.initializer.remove(next(init for init in graph.initializer if init.name == target))
    initializers, nodes = _dequantize_nodes(name, wrapper)
    graph.initializer.extend(initializers)
    first_use = next((index for index, node in enumerate(graph.node) if target in node.input), len(graph.node))
    for offset, node in enumerate(nodes):
        graph.node.insert(first_use + offset, node)


FORMATS = {"DequantizeLinear": rewrite_dequantize_linear, "MatMulNBits": rewrite_matmul_nbits}
"""ONNX formats of a weight-only layer: name -> ``rewrite(graph, layer_name, wrapper)``."""


def check_format(onnx_format: str) -> None:
    if onnx_format not in FORMATS:
        raise ConfigError(f"WeightOnlyQuantizer.export_model: Expected onnx_format to be one of {sorted(FORMATS)}. "
                          f"Received: onnx_format={onnx_format!r}")


def export_weight_only_onnx(model: nn.Module, wrappers: dict[str, Any], path: str, dummy_input: Any,
                            onnx_format: str = "DequantizeLinear") -> None:
    """Write ``model`` to ``path``, each layer of ``wrappers`` (name -> WeightOnlyWrapper) in ``onnx_format`` (a
    key of :data:`FORMATS`). ``dummy_input``: a tensor or a tuple of positional inputs."""
    import onnx
    from onnx import helper

    check_format(onnx_format)
    plain = plain_copy(model, wrappers).eval()
    args = dummy_input if isinstance(dummy_input, tuple) else (dummy_input,)
    with contextlib.redirect_stdout(io.StringIO()):
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        proto = torch.onnx.export(plain, args, dynamo=True, opset_version=OPSET, verbose=False,
                                  optimize=False).model_proto
    graph = proto.graph
    names = {init.name for init in graph.initializer}
    for name, wrapper in wrappers.items():
        if f"{name}.weight" not in names:
            raise UnsupportedOpError(f"ONNX export: the weight of layer {name!r} is not a graph initializer named "
                                     f"{name + '.weight'!r} (the exporter folded or renamed it), so its codes cannot "
                                     f"be written. Export this layer in float: exclude it from the quantizer.")
        FORMATS[onnx_format](graph, name, wrapper)
    if any(node.domain == DOMAIN for node in graph.node):
        proto.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, tmp)
