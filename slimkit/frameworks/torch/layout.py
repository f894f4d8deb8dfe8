"""What a PyTorch layer is called in ``op_types``, and which axis of its weight indexes output channels.

A layer answers to its class name and to the name of every ``torch.nn`` (or other) layer class it derives
from: ``'Conv2d'`` matches a ``class MyDepthwise(nn.Conv2d)``. Well-known Linear-like layers of other
libraries, whose weight is a plain matrix stored in their own layout, are registered here with that layout
and answer to ``'Linear'`` too: Hugging Face's GPT-2 ``Conv1D`` computes ``x @ weight + bias`` with
``weight`` of shape ``(in, out)``, so its output channels are axis 1 (``nn.Linear``: axis 0). Pruners and
quantizers read the axis from here; they never guess it from the shape.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.layout import layer_types, out_axis
>>> class MyDepthwise(torch.nn.Conv2d): pass
>>> layer_types(MyDepthwise(4, 4, 3, groups=4)), out_axis(torch.nn.ConvTranspose2d(2, 3, 3))
(('MyDepthwise', 'Conv2d'), 1)
>>> from transformers.pytorch_utils import Conv1D
>>> layer_types(Conv1D(8, 4)), out_axis(Conv1D(8, 4)), tuple(Conv1D(8, 4).weight.shape)
(('Conv1D', 'Linear'), 1, (4, 8))
>>> layer_types(torch.nn.MultiheadAttention(4, 2).out_proj)   # its parent never calls it: not a 'Linear' here
('NonDynamicallyQuantizableLinear',)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from slimkit.compression.config import class_names

ROLES: dict[str, tuple[str, ...]] = {
    "weighted": ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear"),
    "batchnorm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    "linear": ("Linear",),
}
"""What ``'default'`` in ``op_types`` expands to, per compressor role."""


@dataclass(frozen=True)
class LinearLike:
    """A Linear-like layer class of another library: ``out_axis`` of its 2-D weight indexes output features."""

    out_axis: int
    alias: str = "Linear"


LINEAR_LIKE: dict[str, LinearLike] = {
    "transformers.pytorch_utils.Conv1D": LinearLike(out_axis=1),  # GPT-2, GPT, ...: weight (in, out)
}
"""Registered by ``'<module>.<qualified class name>'`` so that the library is never imported to look it up."""


READ_BY_PARENT: frozenset[str] = frozenset({
    "torch.nn.modules.linear.NonDynamicallyQuantizableLinear",  # nn.MultiheadAttention.out_proj
})
"""Layer classes whose parent reads their parameters instead of calling them: a wrapper around one would never run,
so they answer only to their own class name and cannot be wrapped."""


KERNELS: dict[str, str] = {
    "torch.nn.modules.activation.MultiheadAttention": "in_proj_weight",  # q, k, v stacked: (3 * embed, embed)
}
"""Layers compressed through a weight that is not called ``weight``, by ``'<module>.<qualified class name>'``: the
parameter's name. The layer's entry is then that weight alone (``LayerRef.kernel``; no bias mask, and a quantizer
fake-quantizes only that weight). Its output features are axis 0."""


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def read_by_parent(module: nn.Module) -> bool:
    """Whether ``module``'s parent computes with its parameters directly (see :data:`READ_BY_PARENT`)."""
    return _qualified(type(module)) in READ_BY_PARENT


def linear_like(module: nn.Module) -> LinearLike | None:
    """The :class:`LinearLike` entry of ``module``'s class or of a class it derives from, or None."""
    for cls in type(module).__mro__:
        entry = LINEAR_LIKE.get(_qualified(cls))
        if entry is not None:
            return entry
    return None


def kernel_of(module: nn.Module) -> str | None:
    """The :data:`KERNELS` parameter ``module`` is compressed through, or None (its ``weight``); None as well when
    that parameter is absent (a ``MultiheadAttention`` with separate q / k / v projections has no
    ``in_proj_weight``)."""
    for cls in type(module).__mro__:
        name = KERNELS.get(_qualified(cls))
        if name is not None:
            return name if getattr(module, name, None) is not None else None
    return None


def param_name(kind: str, kernel: str | None) -> str | None:
    """The attribute holding a layer's ``'weight'`` / ``'bias'``: ``kernel`` for the weight of a :data:`KERNELS`
    layer, which has no bias of its own (None)."""
    if kernel is None:
        return kind
    return kernel if kind == "weight" else None


def layer_types(module: nn.Module) -> tuple[str, ...]:
    """Every name ``op_types`` matches ``module`` by: its class, its base layer classes, a registered alias (only
    its class for a layer its parent reads directly)."""
    if read_by_parent(module):
        return (type(module).__name__,)
    entry = linear_like(module)
    return class_names(type(module), nn.Module, (entry.alias,) if entry else ())


def out_axis(module: nn.Module) -> int:
    """Axis of ``module.weight`` that indexes output channels: 1 for transposed convs and registered layers
    storing their weight as ``(in, out)``, else 0."""
    entry = linear_like(module)
    if entry is not None:
        return entry.out_axis
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
