"""``verify()`` compares on several inputs and names the worst element and the ops the int8 emulation covers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slimkit import models
from slimkit.algorithms.quantization import QATQuantizer
from slimkit.converter import TFLiteConverter, verify
from slimkit.converter.verify import _draws, run_tflite
from slimkit.frameworks.torch import int8_emulation
from tests.converter.conftest import op_codes
from tests.converter.test_int8 import Branches, quantize

NNI_STYLE = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


@pytest.fixture(scope="module")
def nni_style_digits(tmp_path_factory):
    """The digits CNN after a few QAT steps with NNI-style input, weight and output grids on every layer: neighbouring
    layers' output and input grids differ, so the file requantizes int8 -> int8 between them."""
    torch.manual_seed(0)
    x_train, y_train, x_test, _ = models.load_digits_tensors()
    model = models.DigitsCNN(width=8)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    QATQuantizer(model, NNI_STYLE, optimizer=optimizer, dummy_input=x_train[:1]).compress()
    model.train()
    for start in range(0, 640, 64):
        optimizer.zero_grad()
        F.cross_entropy(model(x_train[start:start + 64]), y_train[start:start + 64]).backward()
        optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("nni") / "digits.tflite"
    TFLiteConverter(model, x_test[:1], path, dynamic_batch=True).convert()
    return model, x_test, path


@pytest.mark.slow
def test_nni_style_qat_file_equals_the_emulation_on_every_test_image(nni_style_digits):
    model, x_test, path = nni_style_digits
    codes = op_codes(path)
    assert codes.count("QUANTIZE") == 4, codes  # the input's, and three int8 -> int8 requantizations
    got = run_tflite(path, [x_test.permute(0, 2, 3, 1).numpy()])[0]
    quantizer = model.conv1._ref.quantizer
    with torch.no_grad():
        plain = model(x_test).numpy()
        with quantizer.emulate_integer():
            exact = model(x_test).numpy()
    assert len(x_test) == 450
    np.testing.assert_array_equal(got, exact)
    assert (plain != got).any(axis=1).sum() > 0  # the fake-quant model rounds the requantizations differently


@pytest.mark.slow
def test_verify_finds_what_the_example_alone_hides(nni_style_digits, monkeypatch):
    """Without the requantization's arithmetic (as before), the file and the emulation agree on the example but not on
    the random draws: verify() reports the difference and where it is."""
    model, x_test, path = nni_style_digits
    assert verify(model, x_test[:1], path).max_abs_error == 0.0
    monkeypatch.setattr(int8_emulation, "convert", lambda *args: None)
    example = next(x for x in x_test[:40].split(1) if verify(model, x, path, draws=0).max_abs_error == 0.0)
    example_only = verify(model, example, path, draws=0)
    draws = verify(model, example, path)
    result = verify(model, example, path, batches=[x_test])
    assert example_only.inputs == 1 and draws.inputs == 4 and result.inputs == 5
    assert example_only.max_abs_error == 0.0 and draws.max_abs_error > 0 and result.max_abs_error > 0
    assert "draw" in draws.worst
    assert "input" in result.worst and "output 0, element" in result.worst
    assert result.emulated_ops == ("CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED", "MAX_POOL_2D", "MEAN", "QUANTIZE")
    assert result.approximate_ops == ()


def test_verify_emulates_every_int8_op_of_the_branches(tmp_path):
    """Pooling, activations with tables or fixed-point kernels, softmax and concatenation: all emulated exactly (the
    ops the emulation leaves to fake quantization are named per layer: tests/converter/test_int8_emulation_ops.py)."""
    torch.manual_seed(0)
    model, x = quantize(Branches().eval(), (3, 8, 8))
    path = tmp_path / "branches.tflite"
    TFLiteConverter(model, x, path).convert()
    result = verify(model, x, path)
    assert result.emulated_integer and result.inputs == 4
    assert result.approximate_ops == () and result.max_abs_error == 0.0
    assert {"AVERAGE_POOL_2D", "LOGISTIC", "SOFTMAX", "CONV_2D", "FULLY_CONNECTED",
            "CONCATENATION", "RESHAPE"} <= set(result.emulated_ops)  # F.relu: fused into its conv; hard-swish: float


def test_random_draws_keep_the_example_s_dtypes_and_integer_range():
    example = (torch.tensor([[3, 9, 5]]), torch.full((1, 4), 2.0) + torch.arange(4.0), torch.tensor([True]))
    draws = _draws(example, 5, seed=1)
    assert len(draws) == 5
    for ids, values, flags in draws:
        assert ids.dtype == torch.int64 and ids.shape == (1, 3) and int(ids.min()) >= 3 and int(ids.max()) <= 9
        assert values.dtype == torch.float32 and values.shape == (1, 4) and not torch.equal(values, example[1])
        assert flags.dtype == torch.bool and flags.shape == (1,)
    assert not torch.equal(draws[0][0], draws[1][0]) or not torch.equal(draws[0][1], draws[1][1])
