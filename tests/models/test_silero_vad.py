"""silero-vad rebuilt from the package's weights: equal to the package's own TorchScript model on speech (espeak-ng),
and its PTQ (int8 Conv1d, float LSTM) written as a TFLite file equal to ``emulate_integer()``."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest
import torch

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.converter.verify import run_tflite
from slimkit.errors import SlimkitError
from slimkit.models.silero_vad import CHUNK, CONTEXT, espeak_speech, load_silero_vad
from tests.converter.conftest import op_codes, read_model

WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]
SENTENCES = [len.__doc__, abs.__doc__, str.join.__doc__]


@pytest.fixture(scope="module")
def recordings() -> list[torch.Tensor]:
    """Each docstring spoken on its own, and all of them in one recording (pauses between: speech and silence)."""
    return [espeak_speech([text]) for text in SENTENCES[:2]] + [espeak_speech(SENTENCES)]


@pytest.fixture(scope="module")
def package_model() -> torch.jit.ScriptModule:
    return torch.jit.load(str(files("silero_vad.data").joinpath("silero_vad.jit")), map_location="cpu").eval()


def _package_probabilities(package_model, audio: torch.Tensor) -> torch.Tensor:
    """The package's streaming use: one 512-sample chunk after another, state and context kept inside."""
    package_model.reset_states()
    with torch.no_grad():
        return torch.cat([package_model(chunk[None], 16000)[:, 0] for chunk in audio.split(CHUNK)])


def test_rebuilt_model_equals_the_package_model_on_speech(recordings, package_model) -> None:
    model = load_silero_vad()
    for audio in recordings:
        expected = _package_probabilities(package_model, audio)
        with torch.no_grad():
            got = model(audio[None])[0]
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
        decisions = expected > 0.5
        assert 0.2 < decisions.float().mean() < 0.95  # the recordings hold speech and silence both
        assert torch.equal(got > 0.5, decisions)


def test_step_by_step_equals_the_whole_recording(recordings) -> None:
    model = load_silero_vad()
    audio = recordings[0]
    with torch.no_grad():
        whole = model(audio[None])[0]
        state, previous, steps = None, torch.zeros(CONTEXT), []
        for chunk in audio.split(CHUNK):
            prob, state = model.step(torch.cat([previous, chunk])[None], state)
            steps.append(prob[0, 0])
            previous = chunk[-CONTEXT:]
    torch.testing.assert_close(torch.stack(steps), whole, rtol=0, atol=1e-4)


def test_int8_file_equals_the_emulation(recordings, tmp_path) -> None:
    audio = recordings[2]
    length = 24 * CHUNK
    windows = [audio[i:i + length] for i in range(0, len(audio) - length, length)]
    model = load_silero_vad()
    ptq = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=windows[0][None], progress=False)
    ptq.compress()
    ptq.calibrate([w[None] for w in windows[::2]])
    path = tmp_path / "silero_vad_int8.tflite"
    TFLiteConverter(model, windows[0][None], path).convert()
    _, graph = read_model(path)
    codes = op_codes(path)
    convs = [graph.Operators(i) for i, code in enumerate(codes) if code == "CONV_2D"]
    # the STFT, four encoder convs and the decoder run as int8 kernels; the LSTM and the magnitude's SQRT in float
    assert len(convs) == 6
    assert all(graph.Tensors(op.Inputs(1)).Type() == 9 for op in convs)  # int8 weights
    assert {"UNIDIRECTIONAL_SEQUENCE_LSTM", "SQRT", "LOGISTIC"} <= set(codes)
    for window in windows[1::2][:3]:
        with torch.no_grad(), ptq.emulate_integer():
            expected = model(window[None]).numpy()
        np.testing.assert_array_equal(run_tflite(path, [window[None].numpy()])[0], expected)


def test_a_recording_of_partial_chunks_is_refused() -> None:
    with pytest.raises(SlimkitError, match="multiple of 512"):
        load_silero_vad()(torch.zeros(1, 1000))
