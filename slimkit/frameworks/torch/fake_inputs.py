"""Fake tensors for tracing a model, made straight from each tensor's metadata.

``FakeTensorMode.from_tensor`` describes a tensor in full generality (views and their bases,
shared storages, subclasses, symbolic sizes) and costs a few tenths of a millisecond per tensor,
which for a model's hundreds of parameters and buffers is a sizeable part of a capture. A model's
parameters, buffers and example inputs are nearly always plain tensors, each alone on its
storage: for those a meta tensor with the same sizes, strides and dtype, on the same device, is
the whole description. :func:`fake_tensors` builds those directly and leaves every other tensor
(and every tensor of a list in which two share a storage) to ``from_tensor``.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.fake_inputs import fake_tensors, static_fake_mode
>>> mode = static_fake_mode()
>>> weight = torch.nn.Parameter(torch.randn(3, 2))
>>> fake, again = fake_tensors(mode, [weight, weight])
>>> type(fake).__name__, tuple(fake.shape), fake.requires_grad, isinstance(fake, torch.nn.Parameter)
('FakeTensor', (3, 2), True, True)
>>> fake is again
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode


def static_fake_mode() -> FakeTensorMode:
    """A fake mode as ``make_fx(tracing_mode="fake")`` makes one: static shapes, no real-tensor inputs."""
    from torch._functorch import config
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with config.patch(fake_tensor_allow_unsafe_data_ptr_access=False):
        return FakeTensorMode(allow_fallback_kernels=True, allow_non_fake_inputs=False, shape_env=ShapeEnv(),
                              static_shapes=True)


def fake_tensors(mode: FakeTensorMode, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One fake tensor of ``mode`` per tensor (the same one for a tensor listed twice)."""
    if _storages_shared(tensors):
        return [mode.from_tensor(t, static_shapes=True) for t in tensors]  # from_tensor keeps the aliasing
    made: dict[int, torch.Tensor] = {}
    for t in tensors:
        if id(t) not in made:
            made[id(t)] = _plain_fake(mode, t) if _is_plain(t) else mode.from_tensor(t, static_shapes=True)
    return [made[id(t)] for t in tensors]


def _is_plain(t: torch.Tensor) -> bool:
    # a dense leaf tensor (or parameter) at the start of its own storage, without Python attributes
    # (nn.Buffer's `_is_buffer`, ...) that from_tensor would carry over
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided and t.is_leaf
            and t._base is None and t.storage_offset() == 0 and not t.is_quantized and not t.is_nested
            and not t.__dict__)


def _plain_fake(mode: FakeTensorMode, t: torch.Tensor) -> torch.Tensor:
    from torch.utils._mode_utils import no_dispatch

    with no_dispatch():
        fake = FakeTensor(mode, torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta"), t.device)
    if t.requires_grad:
        fake.requires_grad = True
    if type(t) is torch.nn.Parameter:
        fake._is_param = True  # isinstance(fake, nn.Parameter), as from_tensor marks it
    return fake


def _storages_shared(tensors: Sequence[torch.Tensor]) -> bool:
    owners: dict[int, int] = {}
    for t in tensors:
        if t.layout == torch.strided and not t.is_nested \
                and owners.setdefault(t.untyped_storage()._cdata, id(t)) != id(t):
            return True
    return False
