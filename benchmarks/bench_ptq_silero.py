"""PTQ techniques on silero-vad (real weights, espeak-ng speech) -> benchmarks/results/ptq_silero.json and the
silero-vad section of RESULTS_ptq.md.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_ptq_silero.py`` (``--peers`` adds NNCF's rows to the existing
results, ``--ranges`` naive rows with ``'l2'`` / ``'kl'`` activation ranges, ``--int16x8`` the int16x8 and int8 files
of the encoder and decoder, run in LiteRT). Needs the ``silero-vad`` package (test
extra) and Debian's ``espeak-ng``.

silero-vad (``slimkit.models.silero_vad``: the package's 16 kHz weights, equal to its TorchScript model), whole-graph
PTQ (``op_types: ['default']``: the STFT conv, four encoder Conv1d and the decoder conv; minmax ranges) in the
settings, rows and code of ``bench_ptq_techniques.py``. slimkit quantizes no LSTM: the LSTM stays float, as in the
int8 TFLite file (a float UNIDIRECTIONAL_SEQUENCE_LSTM between DEQUANTIZE and QUANTIZE).

Speech: standard-library docstrings spoken by espeak-ng (en-us), 16 kHz, half a second of silence before each
sentence, white noise at 1e-3 RMS (about -60 dBFS) added everywhere (seeded); calibration speaks ``os.path``'s
docstrings, evaluation the builtins' (disjoint sentences). Cut into 2.048 s windows (64 chunks of 512 samples), each
run from a zero state, the float model likewise. Metrics against the float model on the evaluation windows: SQNR of
the speech probabilities, and the agreement of the speech / non-speech decisions at the package's threshold 0.5.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ptq_techniques import (  # noqa: E402
    ADAROUND,
    NNCF_SETTINGS,
    ORDER,
    ROWS,
    SETTINGS,
    layer_times,
    predict,
    replace_section,
    run_nncf,
    run_row,
    sqnr,
    table,
)
from file_latency import invoke_ms  # noqa: E402
from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from slimkit.converter import TFLiteConverter  # noqa: E402
from slimkit.converter.verify import run_tflite  # noqa: E402
from slimkit.models.silero_vad import CHUNK, espeak_speech, load_silero_vad  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
WINDOW, BATCH, NOISE = 64 * CHUNK, 8, 1e-3
THRESHOLD = 0.5
RANGE_ALGORITHMS = ("l2", "kl")
PT8, PC8 = list(SETTINGS)[:2]
NNCF_ROWS = {"NNCF default (fast bias correction)": {}, "NNCF, no bias correction": {"disable_bias_correction": True}}


def decisions(reference: torch.Tensor, output: torch.Tensor) -> dict:
    """Speech / non-speech agreement with the float model at :data:`THRESHOLD` (%), and probability SQNR (dB)."""
    return {"agreement": float(((output > THRESHOLD) == (reference > THRESHOLD)).float().mean() * 100),
            "sqnr_db": sqnr(reference, output)}


def _docstrings(objects: list) -> list[str]:
    return [obj.__doc__.split("\n\n")[0] for obj in objects]


CALIBRATION_TEXT = _docstrings([os.path.join, os.path.split, os.path.exists, os.path.isdir, os.path.basename,
                                os.path.abspath, os.path.splitext, os.path.normpath, os.path.commonprefix])
EVALUATION_TEXT = _docstrings([len, abs, sorted, zip, range, print, enumerate, isinstance, round, max, min, sum, any,
                               all, open, iter, str.join, str.split, str.strip, dict.get, list.sort, divmod])


def windows(sentences: list[str], seed: int) -> list[torch.Tensor]:
    """The sentences spoken one after another, noise added, cut into batches of :data:`WINDOW`-sample windows."""
    audio = espeak_speech(sentences)
    audio = audio + NOISE * torch.randn(len(audio), generator=torch.Generator().manual_seed(seed))
    cut = audio[:len(audio) // WINDOW * WINDOW].reshape(-1, WINDOW)
    return list(cut.split(BATCH))


def weights_only(model: torch.nn.Module, calibration: list, evaluation: list, reference: torch.Tensor) -> dict:
    """The reference point of the activations' share: per-channel int8 weights of the six convs, float activations."""
    clone = copy.deepcopy(model)
    ptq = PostTrainingQuantizer(clone, [{"quant_types": ["weight"], "op_types": ["default"]}],
                                dummy_input=calibration[0][:1], progress=False)
    ptq.compress()
    ptq.calibrate(calibration)
    return decisions(reference, predict(clone, evaluation))


ENCODER_DECODER = ["encoder.0.0", "encoder.1.0", "encoder.2.0", "encoder.3.0", "decoder"]
"""The layers of the int16x8 file: the STFT's magnitude stays float (LiteRT has no int16 SQRT, and the converter
refuses float ops between int16 tensors), and so does the LSTM."""
FILE_PROFILES = {"int16x8 (tflite_int16x8)": "tflite_int16x8", "int8 (tflite)": "tflite"}


def file_row(model: torch.nn.Module, profile: str, calibration: list, evaluation: list, reference: torch.Tensor,
             folder: Path) -> dict:
    """PTQ (minmax) of the encoder and decoder of a copy of ``model`` under ``profile``, written as a TFLite file and
    run in LiteRT window by window: decisions and SQNR of the file's probabilities, its latency, and how far it is
    from ``emulate_integer()`` on every evaluation window."""
    clone = copy.deepcopy(model)
    ptq = PostTrainingQuantizer(clone, [{"quant_types": ["input", "weight", "output"], "op_names": ENCODER_DECODER}],
                                dummy_input=calibration[0][:1], profile=profile, progress=False)
    ptq.compress()
    ptq.calibrate(calibration)
    path = folder / f"silero_vad_{profile}.tflite"
    TFLiteConverter(clone, calibration[0][:1], path).convert()
    windows = [w for batch in evaluation for w in batch]
    outputs, equal, worst = [], 0, 0.0
    for window in windows:
        got = run_tflite(path, [window[None].numpy()])[0]
        with torch.no_grad(), ptq.emulate_integer():
            expected = clone(window[None]).numpy()
        equal += int(np.array_equal(got, expected))
        worst = max(worst, float(np.abs(got - expected).max()))
        outputs.append(torch.from_numpy(got))
    return {**decisions(reference, torch.cat(outputs)),
            "latency_ms": invoke_ms(path, windows[0][None].numpy(), threads=1),
            "load": os.getloadavg()[0], "size_kb": path.stat().st_size / 1024, "windows": len(windows),
            "windows_equal_to_emulation": equal, "max_abs_from_emulation": worst}


def int16x8_lines(results: dict) -> list[str]:
    if "int16x8" not in results:
        return []
    measured = results["int16x8"]
    lines = [f"### silero-vad, int16x8 file against int8 (`--int16x8`, {measured['when']})", "",
             "Whole-graph would put the STFT magnitude's SQRT between int16 tensors, which LiteRT has no 16x8 kernel "
             "for (the converter refuses it), so both files here quantize the four encoder Conv1d and the decoder "
             "(minmax, per-channel int8 weights), and keep the STFT, its magnitude and the LSTM float. Figures from "
             "the files run in LiteRT window by window; latency: one 2.048 s window, LiteRT's default path, 1 thread, "
             "median of 20.", "",
             "| file | agreement % | SQNR dB | latency ms | size KB | load |", "|---|---|---|---|---|---|"]
    for name, row in measured["rows"].items():
        lines.append(f"| {name} | {row['agreement']:.2f} | {row['sqnr_db']:.2f} | {row['latency_ms']:.1f} | "
                     f"{row['size_kb']:.0f} | {row['load']:.1f} |")
    row, int8 = measured["rows"]["int16x8 (tflite_int16x8)"], measured["rows"]["int8 (tflite)"]
    lines += ["", f"Against `emulate_integer()` on all {row['windows']} evaluation windows: the int8 file's "
              f"probabilities are within {int8['max_abs_from_emulation']:.0e} (float rounding; "
              f"{int8['windows_equal_to_emulation']} windows bit-equal), the int16x8 file's within "
              f"{row['max_abs_from_emulation']:.1e} ({row['windows_equal_to_emulation']} bit-equal). Read off a "
              "window of other espeak-ng speech (`experimental_preserve_all_tensors`): every int16 tensor up to the "
              "LSTM equals the emulation's, the float LSTM of LiteRT and of PyTorch differ by up to 1.2e-6, and the "
              "int16 QUANTIZE after it turns some of those differences into one-step differences (an int16 step is "
              "256 times finer than an int8 one). Latency: the int16x8 file's convolutions run on LiteRT's reference "
              "16x8 kernels (int64 biases), the int8 file's on XNNPACK.", ""]
    return lines


def markdown(results: dict) -> str:
    machine, data = results["machine"], results["data"]
    lines = ["## silero-vad (real weights, synthetic speech)", "",
             f"Machine: {machine['nproc']} cores ({machine['cpu']}), torch {machine['torch']}, 1 thread; measured "
             f"from {results['when']}, load average {results['load']:.1f}. Script: `bench_ptq_silero.py`.", "",
             f"Speech: standard-library docstrings spoken by espeak-ng at 16 kHz with pauses and -60 dBFS noise "
             f"(synthetic speech, not recordings): {data['calibration_s']:.0f} s for calibration (os.path), "
             f"{data['evaluation_s']:.0f} s for evaluation (builtins), in 2.048 s windows; the float model calls "
             f"{data['speech_fraction']:.0f} % of the evaluation chunks speech. Whole-graph PTQ of the six Conv1d "
             "(the LSTM stays float: slimkit has no int8 LSTM), minmax. Agreement: speech / non-speech decisions at "
             "0.5 equal to the float model's, in % of the 32 ms chunks; SQNR of the probabilities. For scale: int8 "
             f"weights alone (per channel, float activations) give {results['weights_only_w8']['agreement']:.2f} % "
             f"and {results['weights_only_w8']['sqnr_db']:.2f} dB, so the loss below is the activations'.", ""]
    for setting in SETTINGS:
        measured = results["settings"].get(setting, {})
        rows = {name: measured[name] for name in ROWS if name in measured}
        rows.update(results.get("peers", {}).get(setting, {}))
        if not rows:
            continue
        lines += table(f"silero-vad, {setting}", rows, digits=2)
    for setting, rows in results.get("ranges", {}).items():
        lines += [f"{setting}, naive with activation ranges searched on histograms instead of min-max (`--ranges`): "
                  + "; ".join(f"`algorithm='{name}'` {row['agreement']:.2f} % / {row['sqnr_db']:.2f} dB"
                              for name, row in rows.items()) + ".", ""]
    lines += [f"AdaRound: {json.dumps(ADAROUND)} per layer.", "", *layer_times(results["settings"], "adaround"),
              "Reading:", "",
              "- The loss is in the activations of the STFT magnitude and the encoder, not in the weights (int8 "
              "weights alone keep 99.7 % of the decisions). `slimkit.analysis.quant_debug` on eight evaluation "
              "windows (per-channel W8A8, naive, calibrated on 16) puts the int8 tensors' SQNR at 26 dB after the "
              "STFT conv, 14 dB after the magnitude's square root (a power spectrum on an 8-bit grid loses its quiet "
              "bins) and 1.5 dB after the last encoder conv.",
              "- Bias correction against the float model (each layer's mean output made the float model's, the "
              "default since 14:36 UTC) is what recovers most: per-channel W8A8 86.2 -> 94.2 %, W4A8 82.3 -> 93.6 % "
              "(94.2 % with gptq); on per-tensor W8A8 it needs equalization first (24.2 -> 93.3 %). Before, bias "
              "correction matched the rounded weights' mean only and changed little (22.9 / 84.4 / 78.1 %).", ""]
    lines += int16x8_lines(results)
    lines += ["MCT and AIMET: not run (MCT needs torchvision, which does not run beside torch 2.13 CPU here; see "
              "the EfficientNet-Lite0 section).", ""]
    if "peers" in results:
        lines += [f"NNCF {results['nncf']} (`--peers`, measured from {results['peers_when']}): `nncf.quantize` on the "
                  "same model, calibration and evaluation windows, symmetric int8 weights (per tensor in the "
                  "per-tensor table) and its CPU config's activations; W4A8 has no NNCF row (`nncf.quantize` takes "
                  "8-bit weights only).", ""]
    return "\n".join(lines)


def main() -> None:
    model = load_silero_vad()
    calibration, evaluation = windows(CALIBRATION_TEXT, seed=0), windows(EVALUATION_TEXT, seed=1)
    reference = predict(model, evaluation)
    out = ROOT / "benchmarks" / "results" / "ptq_silero.json"
    only = sys.argv[1:]
    if only == ["--ranges"]:  # naive rows with the histogram-searched activation ranges instead of min-max
        results = json.loads(out.read_text())
        for setting in (PT8, PC8):
            for algorithm in RANGE_ALGORITHMS:
                profile, bits = SETTINGS[setting]
                row = run_row(model, profile, bits, [], calibration, evaluation, reference, score=decisions,
                              algorithm=algorithm)
                results.setdefault("ranges", {}).setdefault(setting, {})[algorithm] = row
                print(setting, algorithm, row, flush=True)
                out.write_text(json.dumps(results, indent=1))
        replace_section("silero-vad", markdown(results))
        return
    if only == ["--int16x8"]:
        import tempfile

        results = json.loads(out.read_text())
        with tempfile.TemporaryDirectory() as folder:
            rows = {name: file_row(model, profile, calibration, evaluation, reference, Path(folder))
                    for name, profile in FILE_PROFILES.items()}
        results["int16x8"] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
        print(json.dumps(results["int16x8"], indent=1), flush=True)
        out.write_text(json.dumps(results, indent=1))
        replace_section("silero-vad", markdown(results))
        return
    if only[:1] == ["--peers"]:
        import nncf

        results = json.loads(out.read_text())
        results["peers_when"], results["nncf"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), nncf.__version__
        for setting in NNCF_SETTINGS:
            for name, options in NNCF_ROWS.items():
                row = run_nncf(model, setting, options, calibration, evaluation, reference, score=decisions)
                results.setdefault("peers", {}).setdefault(setting, {})[name] = row
                print(setting, name, row, flush=True)
                out.write_text(json.dumps(results, indent=1))
                replace_section("silero-vad", markdown(results))
        return
    seconds = sum(b.numel() for b in calibration) / 16000, sum(b.numel() for b in evaluation) / 16000
    results = {"machine": describe_machine(torch=torch.__version__, threads=torch.get_num_threads()),
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()[0],
               "data": {"calibration_s": seconds[0], "evaluation_s": seconds[1],
                        "speech_fraction": float((reference > THRESHOLD).float().mean() * 100)}, "settings": {}}
    results["weights_only_w8"] = weights_only(model, calibration, evaluation, reference)
    for setting, name in ORDER:
        if only and name not in only:
            continue
        profile, bits = SETTINGS[setting]
        row = run_row(model, profile, bits, ROWS[name], calibration, evaluation, reference, score=decisions)
        results["settings"].setdefault(setting, {})[name] = row
        print(setting, name, {k: v for k, v in row.items() if k != "adaround_layer_s"}, flush=True)
        out.write_text(json.dumps(results, indent=1))
        replace_section("silero-vad", markdown(results))


if __name__ == "__main__":
    main()
