"""fake_tensors: the directly made fake tensors carry exactly what FakeTensorMode.from_tensor gives them."""

from __future__ import annotations

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

import slimkit.frameworks.torch.fake_inputs as fake_inputs
from slimkit.frameworks.torch.fake_inputs import fake_tensors, static_fake_mode


def _describe(t):
    return (type(t), tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device, t.requires_grad,
            t.is_leaf, isinstance(t, nn.Parameter), t.is_contiguous(),
            t.is_contiguous(memory_format=torch.channels_last))


def _plain_tensors():
    return [nn.Parameter(torch.randn(4, 3)),
            nn.Parameter(torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)),
            nn.Parameter(torch.randn(3), requires_grad=False),
            torch.zeros(2, 2, dtype=torch.int64),
            torch.tensor(7.0),
            torch.randn(0, 3),
            torch.randn(2, 2).requires_grad_()]


def test_plain_tensors_match_from_tensor(monkeypatch):
    tensors = _plain_tensors()
    assert all(fake_inputs._is_plain(t) for t in tensors)
    direct = fake_tensors(static_fake_mode(), tensors)
    monkeypatch.setattr(fake_inputs, "_is_plain", lambda t: False)
    general = fake_tensors(static_fake_mode(), tensors)
    assert [_describe(f) for f in direct] == [_describe(f) for f in general]
    assert [_describe(f)[1:] for f in direct] == [_describe(t)[1:] for t in tensors]
    assert all(type(f) is FakeTensor for f in direct)


def test_one_fake_per_tensor_and_mode():
    mode = static_fake_mode()
    weight, bias = nn.Parameter(torch.randn(2, 2)), torch.randn(2)
    fakes = fake_tensors(mode, [weight, bias, weight])
    assert fakes[0] is fakes[2] and fakes[0] is not fakes[1]
    assert all(f.fake_mode is mode for f in fakes)


def test_shared_storage_keeps_aliasing():
    # a buffer that is a view of another: every tensor goes through from_tensor, which keeps them on one storage
    base = torch.randn(6, 4)
    view = base[2:]
    assert not fake_inputs._is_plain(view)
    fake_base, fake_view = fake_tensors(static_fake_mode(), [base, view])
    assert fake_view.untyped_storage()._cdata == fake_base.untyped_storage()._cdata
    assert (fake_view.storage_offset(), tuple(fake_view.shape)) == (8, (4, 4))


def test_tensor_with_python_attributes_keeps_them():
    buffer = nn.Buffer(torch.ones(3))
    assert buffer.__dict__ == {"persistent": True, "_is_buffer": True}
    assert not fake_inputs._is_plain(buffer)
    fake, = fake_tensors(static_fake_mode(), [buffer])
    assert (fake._is_buffer, fake.persistent) == (True, True)
