"""Interpolation: nearest and bilinear 2-D resizing (RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR)."""

from __future__ import annotations

import numpy as np

from slimkit.converter.ops.conv import NHWC
from slimkit.converter.registry import register


def _resize(ctx, node, code, x, **options):
    x = ctx.layout(x, NHWC)
    out_shape = tuple(node.meta["val"].shape)
    out = ctx.tensor(out_shape, perm=NHWC)
    ctx.emit(code, [x, ctx.const(np.array(out_shape[2:], np.int32))], [out], **options)
    return out


@register("aten.upsample_nearest2d.vec", "aten.upsample_nearest2d.default", emits=("RESIZE_NEAREST_NEIGHBOR",))
def upsample_nearest2d(ctx, node, a):
    return _resize(ctx, node, "RESIZE_NEAREST_NEIGHBOR", a["input"] if "input" in a else a["self"],
                   AlignCorners=False, HalfPixelCenters=False)


@register("aten.upsample_bilinear2d.vec", "aten.upsample_bilinear2d.default", emits=("RESIZE_BILINEAR",))
def upsample_bilinear2d(ctx, node, a):
    align = bool(a["align_corners"])
    return _resize(ctx, node, "RESIZE_BILINEAR", a["input"] if "input" in a else a["self"],
                   AlignCorners=align, HalfPixelCenters=not align)
