"""PTQ techniques on silero-vad (real weights, espeak-ng speech) -> benchmarks/results/ptq_silero.json and the
silero-vad section of RESULTS_ptq.md.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_ptq_silero.py`` (``--peers`` adds NNCF's rows to the existing
results, ``--ranges`` naive rows with ``'l2'`` / ``'kl'`` activation ranges). Needs the ``silero-vad`` package (test
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
    adaround_layer_times,
    predict,
    replace_section,
    run_nncf,
    run_row,
    sqnr,
    table,
)
from machine_info import describe_machine  # noqa: E402

from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
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
    lines += [f"AdaRound: {json.dumps(ADAROUND)} per layer.", "", *adaround_layer_times(results["settings"]),
              "Reading:", "",
              "- The loss is in the activations of the STFT magnitude and the encoder, not in the weights (int8 "
              "weights alone keep 99.7 % of the decisions). `slimkit.analysis.quant_debug` on eight evaluation "
              "windows (per-channel W8A8, naive, calibrated on 16) puts the int8 tensors' SQNR at 26 dB after the "
              "STFT conv, 14 dB after the magnitude's square root (a power spectrum on an 8-bit grid loses its quiet "
              "bins) and 1.5 dB after the last encoder conv.",
              "- AdaRound, which fits each layer's rounding to its quantized inputs, is the one technique that "
              "recovers much on per-channel W8A8. Equalization moves range from the weights into those activations, "
              "which costs here; bias correction alone changes little.", ""]
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
