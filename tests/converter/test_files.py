"""The written file as deployment expects it: a ``serving_default`` signature, a dynamic batch, file mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from torch import nn

from slimkit import models
from slimkit.converter import TFLiteConverter, verify
from slimkit.converter.verify import run_tflite
from slimkit.errors import SlimkitError, UnsupportedOpError
from tests.converter.conftest import op_codes, repeated_names
from tests.converter.test_int8 import quantize_with


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


def input_signature(path) -> list:
    return Interpreter(model_path=str(path)).get_input_details()[0]["shape_signature"].tolist()


@pytest.mark.parametrize("quantized", [False, True])
def test_dynamic_batch_file_runs_any_batch(tmp_path, quantized):
    """A digits file converted with a batch-1 example runs batches of 1, 7 and 450 (the test set's size)."""
    torch.manual_seed(0)
    if quantized:
        model, x, _ = quantize_with(models.DigitsCNN(), (1, 8, 8))
    else:
        model, x = models.DigitsCNN().eval(), torch.randn(1, 1, 8, 8)
    path = tmp_path / "digits.tflite"
    TFLiteConverter(model, x, path, dynamic_batch=True).convert()
    assert input_signature(path) == [-1, 8, 8, 1]
    assert Interpreter(model_path=str(path)).get_input_details()[0]["shape"].tolist() == [1, 8, 8, 1]
    for batch in (1, 7, 450):
        result = verify(model, torch.randn(batch, 1, 8, 8), path, draws=1)
        assert result.emulated_integer == quantized
        assert result.max_abs_error == 0.0 if quantized else result.max_rel_error < 1e-5, (batch, result)
    static = tmp_path / "static.tflite"
    TFLiteConverter(model, x, static).convert()
    assert input_signature(static) == [1, 8, 8, 1]
    with pytest.raises(SlimkitError, match="static.tflite.*batch 450.*dynamic_batch=True"):
        verify(model, torch.randn(450, 1, 8, 8), static)


class Conv1dHead(nn.Module):
    """conv1d (RESHAPEs around a CONV_2D), ``view(x.size(0), -1)``, a slice in time, a reshape merging the batch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3)
        self.fc = nn.Linear(6 * 8, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.size(0), -1)), y[:, :, 2:5].reshape(-1, 2)


class RecurrentHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 5, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


@pytest.mark.parametrize("build, unroll", [(Conv1dHead, False), (RecurrentHead, True)])
def test_dynamic_batch_reshapes_and_slices(tmp_path, build, unroll):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(1, 4, 10) if build is Conv1dHead else torch.randn(1, 3, 4)
    path = tmp_path / "dyn.tflite"
    TFLiteConverter(model, x, path, dynamic_batch=True, unroll_rnn=unroll).convert()
    for batch in (1, 7):
        result = verify(model, torch.randn(batch, *x.shape[1:]), path, unroll_rnn=unroll)
        assert result.max_rel_error < 1e-5, (batch, result)


class BatchConstant(nn.Module):
    def forward(self, x):
        return x + torch.arange(x.size(0)).float().view(-1, 1)


def test_dynamic_batch_refuses_what_it_cannot_write(tmp_path):
    path = tmp_path / "never.tflite"
    with pytest.raises(UnsupportedOpError, match="dynamic_batch: ADD at <root> .*constant computed from the batch"):
        TFLiteConverter(BatchConstant(), torch.randn(2, 3), path, dynamic_batch=True).convert()
    with pytest.raises(UnsupportedOpError, match="UNIDIRECTIONAL_SEQUENCE_LSTM at lstm .*unroll_rnn=True"):
        TFLiteConverter(RecurrentHead().eval(), torch.randn(1, 3, 4), path, dynamic_batch=True).convert()
    with pytest.raises(UnsupportedOpError, match="batch on axis 0, all of one size"):
        TFLiteConverter(TwoInOut(), (torch.randn(1, 3, 4, 4), torch.randn(2, 5)), path, dynamic_batch=True).convert()
    assert not path.exists()


class Stacked(nn.Module):
    def __init__(self, bidirectional: bool):
        super().__init__()
        self.lstm = nn.LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=bidirectional)

    def forward(self, x):
        return self.lstm(x)[0]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_sequence_lstm_state_is_reset_on_every_invocation(tmp_path, bidirectional):
    """Invocations of one interpreter are independent: the second run of the same input equals the first, and a run
    after another input equals PyTorch (the state tensors are zeroed inside the file)."""
    torch.manual_seed(0)
    model = Stacked(bidirectional).eval()
    x, other = torch.randn(2, 3, 4), torch.randn(2, 3, 4) * 3
    path = tmp_path / "lstm.tflite"
    TFLiteConverter(model, x, path).convert()
    assert "SEQUENCE_LSTM" in " ".join(op_codes(path))
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    index, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    runs = []
    for feed in (x, x, other, x):
        interpreter.set_tensor(index, feed.numpy())
        interpreter.invoke()
        runs.append(interpreter.get_tensor(out).copy())
    np.testing.assert_array_equal(runs[1], runs[0])
    np.testing.assert_array_equal(runs[3], runs[0])
    with torch.no_grad():
        np.testing.assert_allclose(runs[2], model(other).numpy(), rtol=1e-5, atol=1e-6)


def test_a_file_litert_rejects_is_never_written(tmp_path, monkeypatch):
    from slimkit.converter import writer

    path = tmp_path / "model.tflite"
    path.write_bytes(b"the previous file")
    monkeypatch.setattr(writer.Serialized, "write_to", lambda self, f: f.write(b"TFL3 but not a model"))
    with pytest.raises(SlimkitError, match=r"model\.tflite: LiteRT could not load and run the file: ValueError"):
        TFLiteConverter(nn.Linear(4, 2), torch.randn(1, 4), path).convert()
    assert path.read_bytes() == b"the previous file" and sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]
    TFLiteConverter(nn.Linear(4, 2), torch.randn(1, 4), path, validate=False).convert()  # unchecked: written
    assert path.read_bytes() == b"TFL3 but not a model"


def test_a_file_that_crashes_the_interpreter_is_never_written(tmp_path, monkeypatch):
    """The interpreter runs in another process: its segfault is reported, and the next check gets a new process."""
    from slimkit.converter import validate

    crashing = validate._Worker()
    monkeypatch.setattr(validate, "_WORKER", "import os, signal, sys\nsys.stdin.readline()\n"
                                             "os.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setattr(validate, "_worker", crashing)
    path = tmp_path / "crash.tflite"
    with pytest.raises(SlimkitError, match=r"crash\.tflite: .*the interpreter crashed \(SIGSEGV\)"):
        TFLiteConverter(nn.Linear(4, 2), torch.randn(1, 4), path).convert()
    assert not path.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    crashing.close()
    TFLiteConverter(nn.Linear(4, 2), torch.randn(1, 4), path).convert()
    assert path.exists()


class LargeBias(nn.Module):
    """A conv + BatchNorm (folded: a large folded bias) and a linear with a large bias, both after a (nearly) dead
    input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.bn.bias.copy_(torch.tensor([40.0, -30.0, 5.0, 0.5]))
            self.fc.bias.copy_(torch.tensor([50.0, -20.0, 3.0]))

    def forward(self, x, y):
        return self.bn(self.conv(x)), self.fc(y)


@pytest.mark.parametrize("spread", [0.0, 1e-7])
def test_input_scale_floor_keeps_large_biases_in_int32(tmp_path, spread):
    """An all-zero or nearly dead input range with a large bias: the input scale is floored so the int32 bias takes at
    most half of the int32 range (the other half for the sum of products),
    in the quantizer's parameters (the fake-quant model) and in the file alike, so the output is the bias."""
    import warnings

    from slimkit.algorithms.quantization import PostTrainingQuantizer
    from slimkit.compression.quant import bias_scale_floor

    torch.manual_seed(0)
    model = LargeBias().eval()
    batch = (torch.randn(16, 2, 4, 4) * spread, torch.randn(16, 8) * spread)
    example = tuple(t[:1] for t in batch)
    with torch.no_grad():
        expected = [t.numpy() for t in model(*example)]  # the float model: the biases (the input is ~0)
    config = [{"quant_types": ["input", "weight", "output"], "op_types": ["Conv2d", "Linear"]}]
    quantizer = PostTrainingQuantizer(model, config, algorithm="minmax", dummy_input=example)
    quantizer.compress()
    quantizer.calibrate([(batch, None)])
    for name in ("conv", "fc"):
        params = quantizer.params[name]
        floor = bias_scale_floor(quantizer.backend.effective_bias(quantizer.layer(name)), params["weight"].scale)
        assert params["input"].scale[0] >= floor > 0
    path = tmp_path / "bias.tflite"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the converter warns when it has to clip a bias to int32
        TFLiteConverter(model, example, path).convert()
    result = verify(model, example, path)
    assert result.emulated_integer and result.max_abs_error == 0.0
    got = run_tflite(path, [np.moveaxis(example[0].numpy(), 1, -1), example[1].numpy()])
    got = {out.ndim: out for out in got}
    for key, out, reference in (("conv", np.moveaxis(got[4], -1, 1), expected[0]), ("fc", got[2], expected[1])):
        step = float(quantizer.params[key]["output"].scale[0])
        assert np.abs(reference).max() > 20 and np.abs(out - reference).max() <= step / 2 * 1.001


class DeadBranch(nn.Module):
    """A dead ReLU (all-zero range) added to a tensor of range ~1e-9, then a conv with large biases."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.relu = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.ReLU()
        with torch.no_grad():
            self.a.bias.fill_(-5.0)
            self.b.bias.copy_(torch.tensor([50.0, -20.0, 3.0, 1.0]))

    def forward(self, x):
        return self.b(self.relu(self.a(x)) + 1e-9 * x.mean())


@pytest.mark.parametrize("floor", [True, False])
def test_dead_ranges_give_files_litert_runs(tmp_path, floor):
    """Without the profile's least activation scale, the dead ReLU's range gets scale 1.0 and the ADD's output about
    1e-14: LiteRT's ADD aborts in allocate_tensors (SIGABRT). That file is refused by name and never written; with the
    floor (float32's epsilon, as PyTorch's observers) the file runs and equals the emulation."""
    import dataclasses

    from slimkit.algorithms.quantization import PostTrainingQuantizer
    from slimkit.compression.profiles import get_profile

    torch.manual_seed(0)
    model = DeadBranch().eval()
    x = torch.randn(1, 3, 4, 4) * 0.1
    profile = get_profile("tflite") if floor else dataclasses.replace(get_profile("tflite"), min_activation_scale=0.0)
    config = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]
    quantizer = PostTrainingQuantizer(model, config, algorithm="minmax", dummy_input=x, profile=profile)
    quantizer.compress()
    quantizer.calibrate([torch.randn(8, 3, 4, 4) * 0.1])
    path = tmp_path / "dead.tflite"
    if not floor:
        with pytest.raises(SlimkitError, match=r"dead\.tflite: .*the interpreter crashed \(SIGABRT\)"):
            TFLiteConverter(model, x, path).convert()
        assert list(tmp_path.iterdir()) == []
        return
    TFLiteConverter(model, x, path).convert()
    assert float(quantizer.params["b"]["input"].scale[0]) >= 2.0 ** -23
    assert verify(model, x, path).max_abs_error == 0.0


def test_every_tensor_name_is_unique(tmp_path):
    """fx names nodes ``layer_norm``, ``layer_norm_1``, ...; a second tensor of node ``layer_norm`` took node
    ``layer_norm_1``'s name (5 names twice in this tiny BERT's float file, 13 in MiniLM's), and ai-edge-quantizer
    refuses a file that repeats a tensor name."""
    import transformers

    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(1, 64, (1, 8))
    path = tmp_path / "bert.tflite"
    TFLiteConverter(model, ids, path).convert()
    assert repeated_names(path) == []
    assert verify(model, ids, path).max_abs_error < 1e-4


def test_unique_names_renames_later_repeats():
    from slimkit.converter.ir import Graph, Op, Tensor
    from slimkit.converter.passes import unique_names

    x, y, z, w = Tensor("x", (2,)), Tensor("y", (2,)), Tensor("y", (2,)), Tensor("y_1", (2,))
    graph = Graph([Op("RELU", [x], [y]), Op("RELU", [y], [z]), Op("ADD", [z, y], [w])], [x], [w])
    assert unique_names(graph) == 1
    assert [t.name for t in (x, y, z, w)] == ["x", "y", "y_2", "y_1"]
