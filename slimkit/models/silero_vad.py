"""silero-vad (Silero Team, MIT licence), the 16 kHz voice-activity model, rebuilt as a plain PyTorch module.

The architecture is the one the ``silero-vad`` package spells out (``silero_vad/tinygrad_model.py`` and its TorchScript
model): per 512-sample chunk, with the previous chunk's last 64 samples in front, a reflect pad of 64 on the right, an
STFT written as a fixed Conv1d (258 filters of 256 taps, hop 128) and its magnitude, four Conv1d + ReLU, an LSTM cell
carried from chunk to chunk, ReLU, a 1x1 Conv1d and a sigmoid: the speech probability of the chunk.

Weights: the package's ``silero_vad_16k.safetensors`` is *another* checkpoint than the one its TorchScript and ONNX
models run (every layer but the STFT differs, by up to 4.0 on ``conv1.weight``), so rebuilding from it cannot match
the package's own model (on espeak-ng speech: 0.76 off at worst, 2 % of the decisions flipped).
:func:`load_silero_vad` reads the weights the TorchScript model runs, from the package's ``silero_vad_16k_op15.onnx``
(ONNX initializers: plain arrays, no code executed), and the rebuilt model then gives the TorchScript model's
probabilities to float rounding.

:meth:`SileroVAD.forward` runs a whole recording at once (chunks batched through the convolutions, one ``nn.LSTM``
over the chunks: what PTQ and the TFLite converter see); :meth:`SileroVAD.step` runs one chunk with an explicit state,
as the package's streaming model does.

Example:

>>> import torch
>>> from slimkit.models import SileroVAD
>>> model = SileroVAD().eval()
>>> audio = torch.randn(2, 3 * 512) * 0.1
>>> probs = model(audio)
>>> probs.shape
torch.Size([2, 3])
>>> prob, state = model.step(torch.cat([torch.zeros(2, 64), audio[:, :512]], 1))
>>> torch.allclose(prob[:, 0], probs[:, 0], atol=1e-6), state.shape
(True, torch.Size([2, 2, 128]))
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave

import numpy as np
import torch
from torch import Tensor, nn

from slimkit.errors import MissingDependencyError, SlimkitError
from slimkit.utils.optional import require

SAMPLE_RATE, CHUNK, CONTEXT = 16000, 512, 64
"""The 16 kHz model's rate, the samples it decides on per step, and the previous samples it sees in front."""
N_FFT, HOP = 256, 128
HIDDEN = 128

_ONNX_FILE = "silero_vad_16k_op15.onnx"
# this module's parameter -> the ONNX initializer that holds it
_ONNX_NAMES = {"stft.weight": "model.stft.forward_basis_buffer",
               **{f"encoder.{i}.0.{p}": f"model.encoder.{i}.reparam_conv.{p}" for i in range(4) for p in ("weight",
                                                                                                        "bias")},
               "rnn.weight_ih_l0": "model.decoder.rnn.weight_ih", "rnn.weight_hh_l0": "model.decoder.rnn.weight_hh",
               "rnn.bias_ih_l0": "model.decoder.rnn.bias_ih", "rnn.bias_hh_l0": "model.decoder.rnn.bias_hh",
               "decoder.weight": "model.decoder.decoder.2.weight", "decoder.bias": "model.decoder.decoder.2.bias"}


def _conv_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, 3, stride, 1), nn.ReLU())


class SileroVAD(nn.Module):
    """The 16 kHz silero-vad network (random weights; :func:`load_silero_vad` gives the package's).

    Example:

    >>> import torch
    >>> model = SileroVAD().eval()
    >>> model(torch.zeros(1, 4 * 512)).shape
    torch.Size([1, 4])
    """

    def __init__(self) -> None:
        super().__init__()
        self.stft = nn.Conv1d(1, N_FFT + 2, N_FFT, HOP, bias=False)
        self.encoder = nn.Sequential(_conv_relu(N_FFT // 2 + 1, 128, 1), _conv_relu(128, 64, 2),
                                     _conv_relu(64, 64, 2), _conv_relu(64, HIDDEN, 1))
        self.rnn = nn.LSTM(HIDDEN, HIDDEN, batch_first=True)
        self.decoder = nn.Conv1d(HIDDEN, 1, 1)

    def features(self, windows: Tensor) -> Tensor:
        """``(n, CONTEXT + CHUNK)`` windows -> ``(n, HIDDEN)`` encoder features (STFT magnitude, four convs)."""
        x = self.stft(nn.functional.pad(windows, (0, CONTEXT), mode="reflect").unsqueeze(1))
        cut = N_FFT // 2 + 1
        magnitude = torch.sqrt(x[:, :cut] ** 2 + x[:, cut:] ** 2)
        return self.encoder(magnitude).squeeze(-1)

    def head(self, hidden: Tensor) -> Tensor:
        """LSTM outputs ``(b, t, HIDDEN)`` -> speech probabilities ``(b, t)``."""
        return torch.sigmoid(self.decoder(torch.relu(hidden).transpose(1, 2))).squeeze(1)

    def forward(self, audio: Tensor) -> Tensor:
        """``(batch, n * CHUNK)`` 16 kHz samples -> ``(batch, n)`` speech probability of each chunk, from a zero
        state and zero context, as the package's model gives chunk after chunk."""
        batch, samples = audio.shape
        if samples % CHUNK:
            raise SlimkitError(f"Expected a multiple of {CHUNK} samples per recording (16 kHz chunks). Received: "
                             f"audio.shape={tuple(audio.shape)}. Pad it with zeros to a multiple of {CHUNK}.")
        chunks = audio.reshape(batch, samples // CHUNK, CHUNK)
        context = nn.functional.pad(chunks[:, :-1, -CONTEXT:], (0, 0, 1, 0))  # the previous chunk's end; zeros first
        windows = torch.cat([context, chunks], 2).reshape(-1, CONTEXT + CHUNK)
        hidden, _ = self.rnn(self.features(windows).reshape(batch, -1, HIDDEN))
        return self.head(hidden)

    def step(self, window: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One chunk: ``(batch, CONTEXT + CHUNK)`` samples (the previous 64, then 512 new) and the ``(2, batch,
        HIDDEN)`` state (h, c; zeros when None) -> ``((batch, 1)`` probability, new state)."""
        if state is None:
            state = window.new_zeros(2, window.shape[0], HIDDEN)
        hidden, (h, c) = self.rnn(self.features(window).unsqueeze(1), (state[:1], state[1:]))
        return self.head(hidden), torch.cat([h, c])


def silero_vad_onnx_path() -> str:
    """The installed ``silero-vad`` package's 16 kHz ONNX model, whose weights :func:`load_silero_vad` reads."""
    try:
        from importlib.resources import files

        path = files("silero_vad.data").joinpath(_ONNX_FILE)
    except ModuleNotFoundError as error:
        raise MissingDependencyError("silero-vad's weights come from the PyPI package silero-vad (MIT). Expected it "
                                     "installed: pip install silero-vad") from error
    return os.fspath(path)


def load_silero_vad() -> SileroVAD:
    """:class:`SileroVAD` with the weights the ``silero-vad`` package's TorchScript / ONNX models run, in eval.

    Every parameter is filled (strictly, shape checked) from the ONNX file's initializers; no code in the package's
    files is executed.
    """
    onnx = require("onnx", "load_silero_vad()")
    numpy_helper = require("onnx.numpy_helper", "load_silero_vad()")
    initializers = {t.name: t for t in onnx.load(silero_vad_onnx_path()).graph.initializer}
    model = SileroVAD()
    state = {name: torch.from_numpy(np.array(numpy_helper.to_array(initializers[source]), np.float32))
             for name, source in _ONNX_NAMES.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _resample(samples: Tensor, rate: int) -> Tensor:
    """Band-limited resampling to :data:`SAMPLE_RATE` (the spectrum cut or zero-extended, as scipy's ``resample``)."""
    length = round(len(samples) * SAMPLE_RATE / rate)
    spectrum = torch.fft.rfft(samples.double())
    bins = length // 2 + 1
    spectrum = spectrum[:bins] if len(spectrum) >= bins else nn.functional.pad(spectrum, (0, bins - len(spectrum)))
    return (torch.fft.irfft(spectrum, length) * (length / len(samples))).float()


def espeak_speech(sentences: list[str], pause: float = 0.5, voice: str = "en-us") -> Tensor:
    """Speech for silero-vad: each sentence spoken by ``espeak-ng`` (Debian package ``espeak-ng``), resampled to
    16 kHz, with ``pause`` seconds of silence before each, zero-padded to whole chunks: a ``(samples,)`` float tensor
    in [-1, 1].

    Raises:
        MissingDependencyError: ``espeak-ng`` is not on the PATH.
    """
    program = shutil.which("espeak-ng")
    if program is None:
        raise MissingDependencyError("espeak_speech() runs the espeak-ng program, which is not on the PATH. Install "
                                     "it: apt-get install espeak-ng")
    silence = torch.zeros(round(pause * SAMPLE_RATE))
    parts = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "speech.wav")
        for sentence in sentences:
            subprocess.run([program, "-v", voice, "-w", path, " ".join(sentence.split())], check=True,
                           capture_output=True)
            with wave.open(path) as file:
                rate, frames = file.getframerate(), file.readframes(file.getnframes())
            samples = torch.from_numpy(np.frombuffer(frames, np.int16).astype(np.float64) / 32768.0)
            parts += [silence, _resample(samples, rate)]
    audio = torch.cat(parts)
    return nn.functional.pad(audio, (0, -len(audio) % CHUNK))


__all__ = ["CHUNK", "CONTEXT", "SAMPLE_RATE", "SileroVAD", "espeak_speech", "load_silero_vad", "silero_vad_onnx_path"]
