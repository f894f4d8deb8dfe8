"""The written file as deployment expects it: a ``serving_default`` signature, a dynamic batch, file mode."""

from __future__ import annotations

import numpy as np
import torch
from ai_edge_litert.interpreter import Interpreter
from torch import nn

from slimkit.converter import TFLiteConverter


class TwoInOut(nn.Module):
    def forward(self, image, bias):
        return image * 2 + bias.mean(), image.sum(1)


def test_every_file_has_a_serving_default_signature(tmp_path):
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 4, 4), torch.randn(2, 5))
    path = tmp_path / "sig.tflite"
    TFLiteConverter(TwoInOut(), x, path).convert()
    interpreter = Interpreter(model_path=str(path))
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["bias", "image"], "outputs": ["output_0", "output_1"]}}
    got = interpreter.get_signature_runner()(image=x[0].permute(0, 2, 3, 1).numpy(), bias=x[1].numpy())
    expected = TwoInOut()(*x)
    np.testing.assert_allclose(got["output_0"], expected[0].permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["output_1"], expected[1].numpy(), rtol=1e-5, atol=1e-5)
