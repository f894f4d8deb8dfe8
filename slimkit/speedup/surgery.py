"""Layer surgery: build plain torch modules with only the kept channels, weights copied.

One rule per module type (``register_module``). A rule receives the original module, its masked
weight and bias, the keep-vectors the analysis decided and the bias folds, and returns the new
module (same class, same options, fewer channels).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.speedup.module_ops import TRANSPOSED_LINEAR
from slimkit.speedup.registry import register_module


def _index(keep: np.ndarray | None, size: int) -> torch.Tensor:
    if keep is None:
        return torch.arange(size)
    return torch.as_tensor(np.nonzero(keep)[0], dtype=torch.long)


def _param(tensor: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().to(like.dtype).contiguous(), requires_grad=like.requires_grad)


def _clone(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its own parameter / buffer tables (tensors are replaced by the rule)."""
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = dict(module._modules)
    return clone


@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def shrink_conv(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, keep: dict[str, Any],
                folds: dict[int, float]) -> nn.Module:
    cin, cout, groups = module.in_channels, module.out_channels, module.groups
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    keep_in, keep_out = keep.get("in"), keep.get("out")
    in_idx, out_idx = _index(keep_in, cin), _index(keep_out, cout)
    depthwise = groups == cin == cout
    w = weight.detach()
    # bias after folding the removed constant input channels (conv without zero padding only)
    b = torch.zeros(cout, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64).clone()
    if folds:
        wk = w.reshape(cout, cin // groups, -1).sum(-1, dtype=torch.float64)
        per_out, per_in = cout // groups, cin // groups
        for channel, value in folds.items():
            group = channel // per_in
            rows = slice(group * per_out, (group + 1) * per_out)
            b[rows] += wk[rows, channel % per_in] * value
    new_groups = len(in_idx) if depthwise else groups
    kernel = tuple(weight.shape[2:])
    if transposed:  # (in, out/g, k): rows are input channels, columns the group's output channels
        new_w = _gather(w, in_idx, out_idx, cin // groups, cout // groups, groups)
    else:
        new_w = _gather(w, out_idx, in_idx, cout // groups, cin // groups, groups)
    clone = _clone(module)
    clone.in_channels, clone.out_channels, clone.groups = len(in_idx), len(out_idx), new_groups
    clone.weight = _param(new_w.reshape(new_w.shape[0], new_w.shape[1], *kernel), module.weight)
    if bias is not None or folds:
        like = module.bias if module.bias is not None else module.weight
        clone.bias = _param(b[out_idx], like)
    return clone


def _gather(w: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor, per_row: int, per_col: int,
            groups: int) -> torch.Tensor:
    """Weight rows ``row_idx``; in each row, the kept columns of that row's group (local positions)."""
    w = w.reshape(w.shape[0], w.shape[1], -1)[row_idx]
    if per_col == 1:  # one column per group (depthwise): nothing to select inside a row
        return w
    local = torch.stack([col_idx[col_idx // per_col == g] % per_col for g in range(groups)])  # balanced
    index = local[row_idx // per_row]
    return torch.gather(w, 1, index.unsqueeze(-1).expand(-1, -1, w.shape[2]))


@register_module(nn.Linear)
def shrink_linear(module: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None, keep: dict[str, Any],
                  folds: dict[int, float]) -> nn.Module:
    in_idx = _index(keep.get("in"), module.in_features)
    out_idx = _index(keep.get("out"), module.out_features)
    w = weight.detach()
    b = torch.zeros(module.out_features, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64)
    b = b.clone()
    for channel, value in folds.items():
        b += w[:, channel].to(torch.float64) * value
    clone = _clone(module)
    clone.in_features, clone.out_features = len(in_idx), len(out_idx)
    clone.weight = _param(w[out_idx][:, in_idx], module.weight)
    if bias is not None or folds:
        clone.bias = _param(b[out_idx], module.bias if module.bias is not None else module.weight)
    return clone


@register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                 nn.InstanceNorm3d)
def shrink_batch_norm(module: nn.Module, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      keep: dict[str, Any], folds: dict[int, float]) -> nn.Module:
    idx = _index(keep.get("ch"), module.num_features)
    clone = _clone(module)
    clone.num_features = len(idx)
    if module.affine:
        clone.weight = _param(weight[idx], module.weight)
        clone.bias = _param(bias[idx], module.bias)
    if module.track_running_stats and module.running_mean is not None:
        clone.running_mean = module.running_mean[idx].clone()
        clone.running_var = module.running_var[idx].clone()
    return clone


@register_module(nn.PReLU)
def shrink_prelu(module: nn.PReLU, weight: torch.Tensor, bias: torch.Tensor | None, keep: dict[str, Any],
                 folds: dict[int, float]) -> nn.Module:
    idx = _index(keep.get("ch"), module.num_parameters)
    clone = _clone(module)
    clone.num_parameters = len(idx)
    clone.weight = _param(weight[idx], module.weight)
    return clone


@register_module(*TRANSPOSED_LINEAR)
def shrink_transposed_linear(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None,
                             keep: dict[str, Any], folds: dict[int, float]) -> nn.Module:
    """A linear layer storing its weight as (in, out), with ``nx`` / ``nf`` sizes (Hugging Face's Conv1D)."""
    in_features, out_features = weight.shape
    in_idx, out_idx = _index(keep.get("in"), in_features), _index(keep.get("out"), out_features)
    w = weight.detach()
    b = torch.zeros(out_features, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64).clone()
    for channel, value in folds.items():
        b += w[channel].to(torch.float64) * value
    clone = _clone(module)
    clone.nx, clone.nf = len(in_idx), len(out_idx)
    clone.weight = _param(w[in_idx][:, out_idx], module.weight)
    if bias is not None or folds:
        clone.bias = _param(b[out_idx], module.bias if module.bias is not None else module.weight)
    return clone
