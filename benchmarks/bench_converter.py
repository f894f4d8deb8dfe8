"""Converter benchmark: float parity on every zoo model and conversion time at 224x224.

Writes benchmarks/results/converter.json and benchmarks/RESULTS_converter.md.

Run: PYTHONPATH=. python benchmarks/bench_converter.py [--quick] [--int8-only]

Int8: DigitsCNN, ResNet-18 and MobileNetV2 quantized by slimkit's PostTrainingQuantizer (whole graph,
'tflite' profile, minmax, BN statistics settled on random data first) are converted to full-int8 files;
parity is the share of output elements within one output quantization step of the fake-quant model
(LiteRT interpreter). MobileNetV2 at 224x224: file size int8 vs float, and LiteRT latency with
2 threads (median of 5 repeats of the mean of 10 invokes, after 3 warm-up invokes).
--int8-only re-measures just that section and keeps the rest of results/converter.json.
--int8-evidence writes results/converter_int8_evidence.json (benchmarks/converter_int8_evidence.py: parity
with default vs calibration-data BatchNorm statistics, per-layer kernel parity with XNNPACK and the built-in
kernels, XNNPACK delegation, per-op latency profile, TensorFlow's own float / int8 MobileNetV2 files timed
interleaved with slimkit's, and a MobileNetV2 trained on the digits at 224x224); --int8-trained re-measures just
that trained network and keeps the rest of that file.

Timing: each 224x224 model runs in a fresh process: the first (cold) conversion, one warm-up,
then the median of 3 conversions (graph capture + lowering + passes + writing the file). The
time of the capture alone (capture_graph) is measured the same way, to show what the rest of
the pipeline costs, and, interleaved in the same process, the capture through plain torch.export
(capture_graph's fallback) for comparison, median of 5 each.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from machine_info import describe_machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "converter.json")
EVIDENCE = os.path.join(ROOT, "benchmarks", "results", "converter_int8_evidence.json")
MARKDOWN = os.path.join(ROOT, "benchmarks", "RESULTS_converter.md")
TARGETS = {"mobilenet_v2": 0.5, "resnet18": 0.7, "resnet50": 1.0}
TINYNN = {"mobilenet_v2": "1.3-1.8", "resnet18": "2.2", "resnet50": "2.9-3.2"}


def _timing_child(name: str) -> dict:
    import torch

    import slimkit.models as models
    from slimkit.converter import TFLiteConverter, verify
    from slimkit.frameworks.torch.graph import capture_graph

    torch.manual_seed(0)
    model = getattr(models, name)().eval()
    x = torch.randn(1, 3, 224, 224)
    path = os.path.join(tempfile.mkdtemp(), f"{name}.tflite")

    def convert():
        start = time.perf_counter()
        TFLiteConverter(model, x, path).convert()
        return time.perf_counter() - start

    cold = convert()
    convert()  # warm-up
    warm = [convert() for _ in range(3)]
    import slimkit.frameworks.torch.graph as graph_module

    captures, exports = [], []
    for _ in range(5):
        for fast, times in ((True, captures), (False, exports)):
            graph_module._FAST_CAPTURE = fast
            start = time.perf_counter()
            with torch.no_grad():
                capture_graph(model, (x,))
            times.append(time.perf_counter() - start)
    graph_module._FAST_CAPTURE = True
    rest = []
    for _ in range(3):
        conv = TFLiteConverter(model, x, path)
        conv.captured = capture_graph(model, (x,))
        start = time.perf_counter()
        conv.convert()
        rest.append(time.perf_counter() - start)
    result = verify(model, x, path)
    return {"cold_s": cold, "warm_runs_s": warm, "warm_median_s": statistics.median(warm),
            "capture_median_s": statistics.median(captures),
            "export_capture_median_s": statistics.median(exports), "rest_median_s": statistics.median(rest),
            "max_rel_error": result.max_rel_error, "max_abs_error": result.max_abs_error,
            "file_mb": os.path.getsize(path) / 2**20}


def _parity() -> dict:
    import torch

    import slimkit.models as models
    from slimkit.converter import TFLiteConverter, verify

    sys.path.insert(0, ROOT)
    from tests.converter.models import converter_test_models

    cases = {}
    torch.manual_seed(0)
    for name in ("resnet18", "resnet50", "mobilenet_v2"):
        cases[f"{name}@224"] = (getattr(models, name)(), torch.randn(1, 3, 224, 224))
    cases["digits_cnn"] = (models.DigitsCNN(), torch.randn(2, 1, 8, 8))
    try:
        from slimkit.models.zoo import ZOO, build

        for name in sorted(ZOO):
            cases[f"zoo/{name}"] = build(name)
    except ImportError:
        pass
    for name, (m, x) in converter_test_models().items():
        cases[f"tests/{name}"] = (m, x)
    out = {}
    tmp = tempfile.mkdtemp()
    for name, (model, x) in cases.items():
        model.eval()
        path = os.path.join(tmp, "m.tflite")
        try:
            TFLiteConverter(model, x, path).convert()
            r = verify(model, x, path)
            out[name] = {"max_rel_error": r.max_rel_error, "max_abs_error": r.max_abs_error}
        except Exception as error:  # record, keep going
            out[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        print(name, out[name], flush=True)
    return out


INT8_TARGETS = {"size_ratio_min": 3.5, "latency_ratio_max": 0.5, "parity_min": 0.99}


def _ptq_int8(model, shape, seed: int = 0):
    """``model`` settled (BN statistics), quantized whole-graph by PostTrainingQuantizer; returns (model, x,
    quantizer)."""
    import torch
    from settle import settle_batchnorm

    from slimkit.algorithms.quantization import PostTrainingQuantizer

    torch.manual_seed(seed)
    settle_batchnorm(model, [torch.randn(4, *shape) for _ in range(2)])
    x = torch.randn(1, *shape)
    config = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]
    ptq = PostTrainingQuantizer(model, config, algorithm="minmax", dummy_input=x)
    ptq.compress()
    ptq.calibrate([torch.randn(4, *shape) for _ in range(2)])
    model.eval()
    return model, x, ptq


def _emulated_parity(conv, model, quantizer, path, inputs: list) -> dict:
    """LiteRT (XNNPACK) against the fake-quant model evaluated under ``quantizer.emulate_integer()`` on ``inputs``:
    share of logits within one output step, and share equal bit for bit."""
    import torch
    from converter_int8_evidence import output_share

    with quantizer.emulate_integer():
        share = output_share(conv, model, torch.cat(inputs), path, builtin=False)
    return {"emulated_within_one_step": share["within_one_step"], "emulated_exact": share["exact"],
            "emulated_inputs": len(inputs)}


def _latency(path, feed, threads: int = 2, repeats: int = 5, invokes: int = 10, builtin: bool = False) -> float:
    """Median over ``repeats`` of the mean time of ``invokes`` runs; ``builtin``: without the default
    XNNPACK delegate (TFLite's own kernels)."""
    from converter_int8_evidence import interpreter, time_invokes

    interp = interpreter(path, builtin, threads)
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], feed.astype(detail["dtype"]))
    return time_invokes(interp, repeats, invokes)


def _int8() -> dict:
    import numpy as np
    import torch

    import slimkit.models as models
    from slimkit.converter import TFLiteConverter
    from slimkit.converter.verify import run_tflite

    cases = {"digits_cnn@8": (lambda: models.DigitsCNN(), (1, 8, 8)),
             "resnet18@32": (lambda: models.resnet18(), (3, 32, 32)),
             "mobilenet_v2@32": (lambda: models.mobilenet_v2(), (3, 32, 32)),
             "resnet18@224": (lambda: models.resnet18(), (3, 224, 224)),
             "resnet50@224": (lambda: models.resnet50(), (3, 224, 224)),
             "mobilenet_v2@224": (lambda: models.mobilenet_v2(), (3, 224, 224))}
    tmp = tempfile.mkdtemp()
    out = {"parity": {}}
    for name, (build, shape) in cases.items():
        torch.manual_seed(0)
        model, x, quantizer = _ptq_int8(build(), shape)
        path = os.path.join(tmp, name + ".tflite")
        start = time.perf_counter()
        conv = TFLiteConverter(model, x, path)
        conv.convert()
        seconds = time.perf_counter() - start
        codes = [op.code for op in conv.graph.ops]
        step = float(conv.graph.outputs[0].producer.inputs[0].quant.scale[0])
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_tflite(path, [np.moveaxis(x.numpy(), 1, -1)])[0].reshape(expected.shape)
        err = np.abs(got - expected)
        with torch.no_grad():  # the fake-quant model against itself on an input moved by 1e-6: its own sensitivity
            torch.manual_seed(1)
            moved = model(x + 1e-6 * torch.randn_like(x)).numpy()
        self_noise = float((np.abs(moved - expected) <= 1.001 * step).mean())
        float_ops = sorted({op.code for op in conv.graph.ops if op.code not in ("QUANTIZE", "DEQUANTIZE") and any(
            t is not None and not t.is_const and t.dtype == "float32" for t in op.inputs + op.outputs)})
        out["parity"][name] = {"within_one_step": float((err <= 1.001 * step).mean()),
                               "exact": float((err == 0).mean()), "self_within_one_step_1e-6": self_noise,
                               "max_abs_error": float(err.max()), "output_step": step, "ops": len(codes),
                               "quantize": codes.count("QUANTIZE"), "dequantize": codes.count("DEQUANTIZE"),
                               "float_compute_ops": float_ops, "convert_s": seconds,
                               "file_mb": os.path.getsize(path) / 2**20}
        torch.manual_seed(2)
        out["parity"][name].update(_emulated_parity(conv, model, quantizer, path, [x] + [torch.randn(1, *shape)
                                                                                        for _ in range(3)]))
        print(name, out["parity"][name], flush=True)
        if name == "mobilenet_v2@224":
            torch.manual_seed(0)
            float_model = build().eval()
            float_path = os.path.join(tmp, "float.tflite")
            TFLiteConverter(float_model, x, float_path).convert()
            feed = np.moveaxis(x.numpy(), 1, -1)
            t_float, t_int8 = _latency(float_path, feed), _latency(path, feed)
            b_float, b_int8 = _latency(float_path, feed, builtin=True), _latency(path, feed, builtin=True)
            out["mobilenet_v2@224"] = {
                "float_mb": os.path.getsize(float_path) / 2**20, "int8_mb": os.path.getsize(path) / 2**20,
                "size_ratio": os.path.getsize(float_path) / os.path.getsize(path),
                "latency_float_ms": 1e3 * t_float, "latency_int8_ms": 1e3 * t_int8,
                "latency_ratio": t_int8 / t_float, "threads": 2,
                "builtin_float_ms": 1e3 * b_float, "builtin_int8_ms": 1e3 * b_int8, "builtin_ratio": b_int8 / b_float}
            print(out["mobilenet_v2@224"], flush=True)
    out["seed_sweep_32"] = {}
    for name, build in (("resnet18@32", models.resnet18), ("mobilenet_v2@32", models.mobilenet_v2)):
        shares, emulated = [], []
        for seed in range(6):
            torch.manual_seed(seed)
            model, x, quantizer = _ptq_int8(build(), (3, 32, 32), seed)
            path = os.path.join(tmp, "seed.tflite")
            conv = TFLiteConverter(model, x, path)
            conv.convert()
            step = float(conv.graph.outputs[0].producer.inputs[0].quant.scale[0])
            with torch.no_grad():
                expected = model(x).numpy()
            got = run_tflite(path, [np.moveaxis(x.numpy(), 1, -1)])[0].reshape(expected.shape)
            shares.append(float((np.abs(got - expected) <= 1.001 * step).mean()))
            emulated.append(_emulated_parity(conv, model, quantizer, path, [x])["emulated_exact"])
        out["seed_sweep_32"][name] = shares
        out["seed_sweep_32"][name + " emulated_exact"] = emulated
        print(name, "seeds", shares, "emulated exact", emulated, flush=True)
    out["targets"] = INT8_TARGETS
    return out


def _machine() -> dict:
    """The machine now; ``load_avg_at_end`` because callers take this at the end of a run."""
    import torch

    info = describe_machine(torch=torch.__version__)
    info["load_avg_at_end"] = info.pop("load_average")
    return info


def _int8_evidence(trained_only: bool) -> dict:
    """The MobileNetV2@224 int8 evidence (see benchmarks/converter_int8_evidence.py), with the machine's load;
    ``trained_only``: just the trained network's entry, the rest kept from the file."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from converter_int8_evidence import evidence, trained_variant

    load_at_start = os.getloadavg()
    if trained_only:
        with open(EVIDENCE) as f:
            data = json.load(f)
        data["trained_digits224"] = trained_variant(tempfile.mkdtemp())
        data["trained_digits224"]["machine"] = {**_machine(), "load_avg_at_start": load_at_start}
        data["trained_digits224"]["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        return data
    data = evidence(tempfile.mkdtemp())
    data["machine"] = {**_machine(), "load_avg_at_start": load_at_start}
    data["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    return data


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(_timing_child(sys.argv[2])))
        return
    if "--int8-evidence" in sys.argv or "--int8-trained" in sys.argv:
        data = _int8_evidence("--int8-trained" in sys.argv)
        with open(EVIDENCE, "w") as f:
            json.dump(data, f, indent=1)
        return
    load_at_start = os.getloadavg()
    if "--int8-only" in sys.argv:
        with open(RESULTS) as f:
            data = json.load(f)
        data["int8"] = _int8()
        data["int8"]["machine"] = {**_machine(), "load_avg_at_start": load_at_start}
        data["int8"]["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        with open(RESULTS, "w") as f:
            json.dump(data, f, indent=1)
        with open(MARKDOWN, "w") as f:
            f.write(_markdown(data))
        return
    env = dict(os.environ, PYTHONPATH=ROOT)
    timing = {}
    for name in TARGETS:
        proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, env=env,
                              check=True)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        timing[name] = json.loads(line[7:])
        print(name, timing[name], flush=True)
    parity = _parity() if "--quick" not in sys.argv else {}
    int8 = _int8() if "--quick" not in sys.argv else None
    data = {"machine": {**_machine(), "load_avg_at_start": load_at_start}, "timing_224": timing,
            "targets_s": TARGETS, "parity": parity,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    if int8 is not None:
        data["int8"] = {**int8, "machine": data["machine"], "date_utc": data["date_utc"]}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(data, f, indent=1)
    with open(MARKDOWN, "w") as f:
        f.write(_markdown(data))


def _markdown(data) -> str:
    m = data["machine"]
    lines = ["## TFLite converter", "",
             f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, torch {m['torch']}; "
             f"load average at start {', '.join(f'{v:.1f}' for v in m['load_avg_at_start'])}, at end "
             f"{', '.join(f'{v:.1f}' for v in m['load_avg_at_end'])}. {m['note']}.",
             f"Measured {data['date_utc']} UTC by `benchmarks/bench_converter.py`.", "",
             "### Conversion time at 224x224 (capture + lowering + passes + write)", "",
             "| model | cold (1st in process) | warm median of 3 | capture alone | capture via torch.export"
             " | after capture | target | TinyNN (anchor) | max rel. error | file MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in data["timing_224"].items():
        export = f"{t['export_capture_median_s']:.3f} s" if "export_capture_median_s" in t else "-"
        lines.append(f"| {name} | {t['cold_s']:.2f} s | {t['warm_median_s']:.3f} s | {t['capture_median_s']:.3f} s"
                     f" | {export} | {t['rest_median_s']:.3f} s | <= {data['targets_s'][name]} s | {TINYNN[name]} s"
                     f" | {t['max_rel_error']:.1e} | {t['file_mb']:.1f} |")
    ratios = " / ".join(f"{n} {t['export_capture_median_s'] / t['capture_median_s']:.2f}x"
                        for n, t in data["timing_224"].items() if "export_capture_median_s" in t)
    lines += ["", "`capture alone` is the shared graph capture (`capture_graph`: make_fx pre-dispatch fast path, "
              "same graph as torch.export), median of 5; `capture via torch.export` is the same call forced "
              "through its torch.export fallback, interleaved with it in the same process (ratio: "
              f"{ratios}); `after capture` is everything the converter adds (lowering, passes, flatbuffer, "
              "writing the file), median of 3 on an already captured graph. The cold figure is the first "
              "conversion in a fresh process (the first trace in a process costs seconds)."]
    if data["parity"]:
        lines += ["", "### Float parity against PyTorch (LiteRT interpreter, 1 thread)", "",
                  "| model | max relative error | max absolute error |", "|---|---|---|"]
        for name, r in data["parity"].items():
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error']} | |")
            else:
                lines.append(f"| {name} | {r['max_rel_error']:.1e} | {r['max_abs_error']:.1e} |")
    if data.get("int8"):
        lines += _int8_markdown(data["int8"])
    if os.path.exists(EVIDENCE):
        with open(EVIDENCE) as f:
            lines += _evidence_markdown(json.load(f))
    return "\n".join(lines) + "\n"


def _evidence_markdown(e) -> list[str]:
    """The MobileNetV2@224 int8 evidence (``--int8-evidence``, ``--int8-trained``) as tables."""
    local = e["parity"]["calibration"]["xnnpack"]["per_layer_local"]
    local_builtin = e["parity"]["calibration"]["builtin"]["per_layer_local"]
    lines = ["", "### Int8 MobileNetV2 @224: where parity and latency stand (`--int8-evidence`)", "",
             f"Measured {e['date_utc']} UTC (trained variant {e['trained_digits224']['date_utc']} UTC); "
             f"script `benchmarks/converter_int8_evidence.py`, raw figures in "
             "`results/converter_int8_evidence.json`.", "",
             "**Each kernel alone.** Every fake-quantized tensor LiteRT keeps, compared with slimkit's fake-quant "
             "layer run on LiteRT's own input for that layer (random init, BatchNorm statistics from the "
             f"calibration data): XNNPACK differs on {local['mismatched_elements']} of {local['elements']:,} "
             f"elements in {local['layers']} layers, each by one step and each within "
             f"{local['max_tie_distance_of_mismatches']:.1e} of a rounding tie; TFLite's built-in kernels differ on "
             f"{local_builtin['mismatched_elements']:,} (their fixed-point requantization rounds twice, and their "
             "int8 MEAN approximates the zero-point correction).", "",
             "**End to end** (share of logits within one output step of the fake-quant model):", "",
             "| network | XNNPACK | built-in kernels | fake-quant vs itself, input + 1e-6 | accuracy float / "
             "fake-quant / LiteRT |", "|---|---|---|---|---|"]
    for name, label in (("calibration", "random init, BN statistics from data"),
                        ("default", "random init, default BN statistics (activations vanish)")):
        r = e["parity"][name]
        lines.append(f"| {label} | {r['xnnpack']['within_one_step']:.1%} | {r['builtin']['within_one_step']:.1%} | "
                     f"{r['self_within_one_step_1e-6']:.1%} | - |")
    sweep = e["seed_sweep_calibration_bn"]
    lines.append(f"| random init, {len(sweep)} seeds (min-max) | "
                 f"{min(r['within_one_step'] for r in sweep):.1%}-{max(r['within_one_step'] for r in sweep):.1%} | "
                 f"- | {min(r['self_within_one_step_1e-6'] for r in sweep):.1%}-"
                 f"{max(r['self_within_one_step_1e-6'] for r in sweep):.1%} | - |")
    t = e["trained_digits224"]
    a = t["accuracy"]
    lines += [f"| trained on digits at 224x224 ({t['training']['epochs']} epochs, {t['test_images']} test images) | "
              f"{t['xnnpack']['within_one_step']:.1%} | {t['builtin']['within_one_step']:.1%} | "
              f"{t['self_within_one_step_1e-6']:.1%} | {a['float']:.1%} / {a['fake_quant']:.1%} / "
              f"{a['litert_xnnpack']:.1%} |", "",
              "The plain fake-quant model's share follows the network's own sensitivity: a one-step tie flip early "
              "in a deep quantized network is amplified to several output steps, and the fake-quant model is just as "
              "sensitive to a 1e-6 change of its input. Training makes the network calmer (self-agreement "
              f"{t['self_within_one_step_1e-6']:.0%}) and XNNPACK parity rises with it to "
              f"{t['xnnpack']['within_one_step']:.1%} (the same prediction on "
              f"{t['xnnpack']['same_argmax_as_fake_quant']:.1%} of the test images). Evaluated under "
              "`quantizer.emulate_integer()` (the kernels' integer arithmetic), the trained model is within one step "
              f"of the XNNPACK file on {t['xnnpack_vs_emulated']['within_one_step']:.1%} of the logits and equal bit "
              f"for bit on {t['xnnpack_vs_emulated']['exact']:.1%} (accuracy "
              f"{t['xnnpack_vs_emulated']['accuracy_emulated']:.1%}); the random-init rows reach 100% the same way "
              "(the full int8 table above).", ""]
    ratio = e["int8_over_float"]
    lines += ["**Latency** (2 threads, interleaved, fresh interpreter per measurement; int8 / float, median):", "",
              "| files | XNNPACK | built-in kernels |", "|---|---|---|",
              f"| slimkit | {ratio['slimkit']['xnnpack']['median_ms']:.2f}x | "
              f"{ratio['slimkit']['builtin']['median_ms']:.2f}x |",
              f"| TensorFlow's converter on keras.applications.MobileNetV2 | "
              f"{ratio['tensorflow']['xnnpack']['median_ms']:.2f}x | "
              f"{ratio['tensorflow']['builtin']['median_ms']:.2f}x |",
              "", "slimkit's int8 file runs as one XNNPACK partition with QUANTIZE / DEQUANTIZE only at the edges; "
              "per op, int8 CONV_2D is no faster than float on this AVX2 CPU without VNNI, and TensorFlow's own "
              "int8 file is no faster either."]
    return lines


def _int8_markdown(q) -> list[str]:
    m = q["machine"]
    t = q["targets"]
    lines = ["", "### Full int8 (PostTrainingQuantizer, whole graph, 'tflite' profile)", "",
             f"Measured {q['date_utc']} UTC; {m['nproc']} cores ({m['cpu']}), load average at start "
             f"{', '.join(f'{v:.1f}' for v in m['load_avg_at_start'])}, at end "
             f"{', '.join(f'{v:.1f}' for v in m['load_avg_at_end'])}: {m['note']}.", "",
             "Random weights with BatchNorm statistics settled on random data, calibrated (minmax) on 2 random "
             "batches of 4. Parity: share of output elements of the file in LiteRT (XNNPACK) within one output "
             f"quantization step of slimkit's fake-quant model in PyTorch (target >= {t['parity_min']:.0%}): "
             "evaluated under `quantizer.emulate_integer()` (the int8 kernels' arithmetic; the example input and 3 "
             "more random inputs), and as the plain fake-quant model (float32 arithmetic, rounding ties resolved "
             "differently; the example input).", "",
             "| model | emulated: within one step | emulated: bit-exact | plain: within one step | plain: bit-exact "
             "| plain vs itself, input + 1e-6 noise | plain: max abs error "
             "| output step | ops | QUANTIZE / DEQUANTIZE | float compute ops | convert s | file MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in q["parity"].items():
        lines.append(f"| {name} | {r['emulated_within_one_step']:.2%} | {r['emulated_exact']:.2%} | "
                     f"{r['within_one_step']:.2%} | {r['exact']:.2%} | "
                     f"{r['self_within_one_step_1e-6']:.2%} | {r['max_abs_error']:.2e} | "
                     f"{r['output_step']:.2e} | {r['ops']} | {r['quantize']} / {r['dequantize']} | "
                     f"{', '.join(r['float_compute_ops']) or 'none'} | {r['convert_s']:.2f} | {r['file_mb']:.2f} |")
    sweep = q.get("seed_sweep_32", {})
    if sweep:
        lines += ["", "Seed sweep at 32x32 (6 random initialisations each; plain: share of the 1000 logits within "
                  "one step of the plain fake-quant model; emulated: share equal bit for bit under "
                  "`emulate_integer()`):", ""]
        for name, shares in sweep.items():
            if name.endswith("emulated_exact"):
                lines.append(f"- {name}: {', '.join(f'{v:.1%}' for v in shares)}")
                continue
            ok = sum(v >= t["parity_min"] for v in shares)
            lines.append(f"- {name} plain: {ok}/{len(shares)} seeds >= {t['parity_min']:.0%}; "
                         f"shares {', '.join(f'{v:.1%}' for v in shares)}")
        lines += ["", "Each int8 kernel lands on the exact rounding of its real-valued result; the plain fake-quant "
                  "model does too except at rounding ties that its float32 arithmetic resolves differently (a few "
                  "per million elements). A randomly initialised network passes each such step on (column 6: the "
                  "plain model against itself with its input moved by 1e-6), so the plain share measures the "
                  "network's sensitivity; under `emulate_integer()` the model computes the kernels' integer "
                  "arithmetic and matches the file bit for bit."]
    mb = q.get("mobilenet_v2@224")
    if mb:
        size_ok = "meets" if mb["size_ratio"] >= t["size_ratio_min"] else "misses"
        lat_ok = "meets" if mb["latency_ratio"] <= t["latency_ratio_max"] else "misses"
        lines += ["", "| MobileNetV2 @224 | float | int8 | ratio | target |", "|---|---|---|---|---|",
                  f"| file size | {mb['float_mb']:.2f} MB | {mb['int8_mb']:.2f} MB | {mb['size_ratio']:.2f}x smaller "
                  f"| >= {t['size_ratio_min']}x ({size_ok}) |",
                  f"| LiteRT latency, {mb['threads']} threads (median of 5 x 10 invokes) "
                  f"| {mb['latency_float_ms']:.1f} ms"
                  f" | {mb['latency_int8_ms']:.1f} ms | {mb['latency_ratio']:.2f}x | <= {t['latency_ratio_max']}x "
                  f"({lat_ok}) |",
                  f"| same, TFLite built-in kernels (no XNNPACK) | {mb['builtin_float_ms']:.1f} ms | "
                  f"{mb['builtin_int8_ms']:.1f} ms | {mb['builtin_ratio']:.2f}x | |", "",
                  "Latency was measured on the shared, loaded 2-core machine: other jobs compete for both cores, "
                  "so absolute times are noisy upper bounds; both files ran back to back in one process (earlier "
                  "runs the same day gave int8 / float ratios of 0.86x-1.19x with XNNPACK and 0.93x-1.44x with the "
                  "built-in kernels). The CPU has AVX2 but no VNNI: there XNNPACK's int8 kernels (16-bit "
                  "multiply-add) are no faster than its float FMA kernels, so the 0.5x target, which assumes ARM "
                  "dot-product or x86 VNNI hardware, cannot be shown on this machine."]
    return lines


if __name__ == "__main__":
    main()
