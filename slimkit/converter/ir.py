"""The converter's small intermediate representation: TFLite-shaped tensors and operators.

A :class:`Tensor` carries its *logical* (PyTorch) shape plus ``perm``, the order in which the
logical axes are stored physically (``perm[i]`` is the logical axis held by physical axis ``i``).
Layout changes (NCHW -> NHWC, ``permute``) therefore cost nothing until an operator needs a
particular order; see :mod:`slimkit.converter.layout`.

Example:

>>> from slimkit.converter.ir import Tensor
>>> t = Tensor('x', (1, 3, 8, 8), perm=(0, 2, 3, 1))
>>> t.physical_shape
(1, 8, 8, 3)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False)
class QuantParams:
    """Quantization of one tensor: per-tensor when ``scale`` has one entry, else per-channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int = 0

    def rescaled(self, factor: np.ndarray, axis: int) -> QuantParams:
        """The grid of a per-channel constant multiplied by ``factor`` along ``axis``: the same integers, scales times
        ``factor``. Channels whose factor is 1 within float32 rounding keep their scale exactly (a fake-quant conv
        divided by a BatchNorm factor and multiplied back by the BatchNorm: the quantizer's own grid)."""
        factor = np.asarray(factor, np.float64).reshape(-1)
        unit = np.abs(factor - 1.0) <= 2.0 ** -20
        if unit.all():
            return self
        channels = max(factor.size, self.scale.size)
        scale = np.broadcast_to(self.scale.astype(np.float64), (channels,))
        factor = np.broadcast_to(np.where(unit, 1.0, factor), (channels,))
        return QuantParams((scale * factor).astype(np.float32), np.zeros(channels, np.int64), axis)


@dataclass(eq=False)
class Tensor:
    """A value in the TFLite graph (activation or constant)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    data: np.ndarray | None = None  # constant payload, already in physical layout
    perm: tuple[int, ...] | None = None  # None: identity
    quant: QuantParams | None = None
    is_variable: bool = False
    producer: Any = None  # the Op writing it (None for inputs / constants)
    base: Tensor | None = None  # set on a relabelled view (permute): the file stores ``base``
    quant_hint: QuantParams | None = None  # calibrated int8 parameters of a float (fake-quantized) constant
    data_scale: tuple[np.ndarray, int] | None = None  # pending per-channel factor (BN fold), applied on write
    shape_signature: tuple[int, ...] | None = None  # physical shape with -1 on dynamic axes (dynamic_batch)
    sparsity: Any = None  # a sparse constant's SparsityParameters (slimkit.converter.sparse.Sparsity)
    weight_codes: Any = None  # a weight-only layer's codes (slimkit.converter.weight_only.WeightCodes)

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if self.perm is not None and tuple(self.perm) == tuple(range(len(self.shape))):
            self.perm = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def order(self) -> tuple[int, ...]:
        """``perm`` with the identity spelled out."""
        return tuple(self.perm) if self.perm is not None else tuple(range(len(self.shape)))

    @property
    def physical_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.order)

    @property
    def is_const(self) -> bool:
        return self.data is not None

    def scaled(self, scale: np.ndarray, axis: int) -> None:
        """Multiply the constant by ``scale`` along ``axis`` lazily (the writer fuses it into its copy)."""
        if self.data_scale is not None:
            scale = scale * self.data_scale[0]
        self.data_scale = (np.asarray(scale, np.float32), axis)

    def values(self) -> np.ndarray:
        """The constant's final values (pending scale applied)."""
        if self.data_scale is None:
            return self.data
        scale, axis = self.data_scale
        shape = [1] * self.data.ndim
        shape[axis] = -1
        self.data = (self.data * scale.reshape(shape)).astype(self.data.dtype)
        self.data_scale = None
        if self.quant_hint is not None:
            self.quant_hint = self.quant_hint.rescaled(scale, axis)
        return self.data


@dataclass(eq=False)
class Op:
    """One TFLite builtin operator; ``options`` holds its options table fields (CamelCase)."""

    code: str
    inputs: list[Tensor | None]
    outputs: list[Tensor]
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # module path of the PyTorch node, for messages
    origin: str = ""  # the PyTorch function it was lowered from ('layer_norm', 'mul'; '' for ops passes add)
    version: int = 1
    # a RESHAPE that only re-views its input's channels-last bytes (conv1d), a SLICE cropping a TRANSPOSE_CONV:
    # fusion may look through it
    see_through: bool = False


@dataclass
class Graph:
    """A single-subgraph TFLite model."""

    ops: list[Op] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    quant_table: dict[str, QuantParams] = field(default_factory=dict)  # every int8 tensor's parameters
