"""Indexing with several index tensors (``x[i, j]``, as Hugging Face's mask utilities write it): GATHER_ND."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter import layout


def gather_nd(ctx, node, x, indices):
    """``x[indices[0], ..., indices[k-1]]`` for constant integer index tensors on ``x``'s first ``k`` axes."""
    k = len(indices)
    if any(i is None for i in indices):
        ctx.fail("indexing with several tensors is supported on leading axes only (x[i, j], not x[:, i, j])")
    if not all(isinstance(i, torch.Tensor) and not i.is_floating_point() and i.dtype != torch.bool
               for i in indices):
        ctx.fail("indexing with several tensors needs constant integer indices (computed or boolean ones are "
                 "not supported)")
    arrays = np.broadcast_arrays(*(i.detach().cpu().numpy().astype(np.int64) for i in indices))
    sizes = np.array(x.shape[:k]).reshape((1,) * arrays[0].ndim + (k,))
    table = np.stack(arrays, -1)
    table = np.where(table < 0, table + sizes, table).astype(np.int32)
    x = ctx.layout(x, layout.identity(x.rank))
    out = ctx.tensor(tuple(node.meta["val"].shape), x.dtype)
    ctx.emit("GATHER_ND", [x, ctx.const(table)], [out])
    return out
