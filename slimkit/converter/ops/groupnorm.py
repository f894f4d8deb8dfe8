"""Instance norm and group norm: statistics over each sample's (group of) channels, then the per-channel affine."""

from __future__ import annotations

import numpy as np

from slimkit.converter.ops.elementwise import binary
from slimkit.converter.ops.norm import standardize
from slimkit.converter.ops.shape import reshape_to
from slimkit.converter.registry import register


def _affine(ctx, y, weight, bias):
    shape = (y.shape[1],) + (1,) * (y.rank - 2)
    if weight is not None:
        y = binary(ctx, "MUL", y, weight.detach().cpu().numpy().reshape(shape), FusedActivationFunction=0)
    if bias is not None:
        y = binary(ctx, "ADD", y, bias.detach().cpu().numpy().reshape(shape), FusedActivationFunction=0)
    return y


@register("aten.instance_norm.default", emits=("MEAN", "SUB", "MUL", "ADD", "RSQRT"))
def instance_norm(ctx, node, a):
    x = a["input"]
    if not a["use_input_stats"]:
        ctx.fail("instance norm with running statistics (track_running_stats=True in eval) is not supported")
    return _affine(ctx, standardize(ctx, x, list(range(2, x.rank)), a["eps"]), a["weight"], a["bias"])


@register("aten.group_norm.default", emits=("RESHAPE", "MEAN", "SUB", "MUL", "ADD", "RSQRT"))
def group_norm(ctx, node, a):
    x, groups = a["input"], int(a["num_groups"])
    n, c = x.shape[:2]
    grouped = reshape_to(ctx, x, (n, groups, c // groups * int(np.prod(x.shape[2:]))))
    y = reshape_to(ctx, standardize(ctx, grouped, [2], a["eps"]), x.shape)
    return _affine(ctx, y, a["weight"], a["bias"])
