"""dtype bookkeeping shared by converters: PyTorch's type promotion, CAST where an input's type differs."""

from __future__ import annotations

import torch

from slimkit.converter.ir import Tensor

TORCH_NAMES = {torch.float32: "float32", torch.float64: "float32", torch.float16: "float16", torch.int64: "int64",
               torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8",
               torch.bool: "bool"}


def out_dtype(node, index: int | None = None) -> str:
    """The file dtype of the fx node's (``index``-th) result."""
    val = node.meta["val"]
    if index is not None:
        val = val[index]
    return TORCH_NAMES.get(val.dtype, "float32")


def cast(ctx, x, dtype: str):
    """``x`` as ``dtype``: constants converted in numpy, activations through one CAST."""
    if not isinstance(x, Tensor):
        return x
    if x.dtype == dtype:
        return x
    if x.is_const:
        out = ctx.const(x.values().astype(dtype), name=x.name)
        out.shape, out.perm = x.shape, x.perm
        return out
    out = ctx.tensor(x.shape, dtype, perm=x.perm)
    ctx.emit("CAST", [x], [out])
    return out


def promoted(node, names=("self", "other")) -> str:
    """PyTorch's type promotion over the fx node's arguments ``names`` (0-d tensors and scalars rank lower)."""
    spec = [a.name for a in node.target._schema.arguments]
    values = []
    for name in names:
        i = spec.index(name)
        v = node.args[i] if i < len(node.args) else node.kwargs.get(name)
        values.append(v.meta["val"] if isinstance(v, torch.fx.Node) else v)
    result = values[0] if isinstance(values[0], torch.Tensor) else torch.tensor(values[0])
    for v in values[1:]:
        result = torch.empty_like(result, dtype=torch.result_type(result, v))
    return TORCH_NAMES.get(result.dtype, "float32")
