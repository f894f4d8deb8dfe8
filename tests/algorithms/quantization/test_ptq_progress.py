"""PostTrainingQuantizer.calibrate reports progress through slimkit.utils.progress."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from slimkit.algorithms.quantization import PostTrainingQuantizer


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _calibrate(**kwargs) -> PostTrainingQuantizer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Linear"]}], **kwargs)
    ptq.compress()
    ptq.calibrate([torch.randn(2, 4) for _ in range(3)])
    return ptq


@pytest.mark.parametrize(("tty", "quiet_env", "flag", "shown"), [
    (True, None, True, True),      # a terminal: the bar is drawn
    (True, "1", True, False),      # SLIMKIT_QUIET=1 silences it
    (False, None, True, False),    # not a terminal (CI logs, pipes): silent
    (True, None, False, False),    # progress=False: never
])
def test_calibration_progress_bar_follows_slimkit_progress(monkeypatch, tty, quiet_env, flag, shown):
    stream = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    if quiet_env is None:
        monkeypatch.delenv("SLIMKIT_QUIET", raising=False)
    else:
        monkeypatch.setenv("SLIMKIT_QUIET", quiet_env)
    ptq = _calibrate(algorithm="minmax", progress=flag)
    assert ptq.calibrated
    assert ("calibrate (minmax)" in stream.getvalue()) is shown
