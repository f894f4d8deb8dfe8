"""Shared helpers for the speedup tests: masks, masked reference models, comparisons."""

from __future__ import annotations

import copy

import torch
from torch import nn

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def random_masks(model: nn.Module, ratio: float = 0.5, seed: int = 0, skip: tuple[str, ...] = ()) -> dict:
    """Random whole-channel masks (output channels) on every conv / linear layer."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE) or name in skip:
            continue
        axis = 1 if isinstance(module, nn.ConvTranspose2d) else 0
        channels = module.weight.shape[axis]
        keep = (torch.rand(channels, generator=generator) >= ratio).float()
        keep[torch.randint(channels, (1,), generator=generator)] = 1.0
        shape = [1] * module.weight.dim()
        shape[axis] = channels
        bias = keep.clone() if module.bias is not None and axis == 0 else None
        masks[name] = {"weight": keep.view(shape).expand_as(module.weight).clone(), "bias": bias}
    return masks


def masked_copy(model: nn.Module, masks: dict) -> nn.Module:
    """A deep copy of ``model`` with the masks multiplied into its weights: the reference output."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, entry in masks.items():
            module = clone.get_submodule(name)
            module.weight.mul_(torch.as_tensor(entry["weight"], dtype=module.weight.dtype))
            if entry.get("bias") is not None and module.bias is not None:
                module.bias.mul_(torch.as_tensor(entry["bias"], dtype=module.bias.dtype))
    return clone


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    output, reference = output.detach(), reference.detach()
    return float((output - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
