"""A whole-graph quantized model whose forward raises leaves no quantization function mode behind."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import _get_current_function_mode_stack

from slimkit.algorithms.quantization import PostTrainingQuantizer


class Flaky(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fail = False

    def forward(self, x):
        y = torch.relu(self.conv(x)) + 1
        if self.fail:
            raise RuntimeError("model code failed mid-call")
        return y


def test_forward_that_raises_leaves_no_function_mode():
    model, x = Flaky(), torch.randn(1, 3, 8, 8)
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}],
                                algorithm="minmax", dummy_input=x)
    ptq.compress()
    ptq.calibrate([x])
    model.fail = True
    with pytest.raises(RuntimeError, match="mid-call"):
        model(x)
    assert _get_current_function_mode_stack() == []
    plain = torch.randn(2, 2) + 1  # ordinary tensors are no longer intercepted
    assert type(plain) is torch.Tensor
