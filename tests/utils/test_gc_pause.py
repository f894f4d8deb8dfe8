"""gc_paused: the collector is off inside the block and back to its previous state after it."""

from __future__ import annotations

import gc

import pytest

from slimkit.utils.gc_pause import gc_paused


def test_paused_then_restored_even_on_error():
    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="inside"), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("inside")
    assert gc.isenabled()


def test_left_disabled_when_it_was_disabled():
    gc.disable()
    try:
        with gc_paused(), gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
