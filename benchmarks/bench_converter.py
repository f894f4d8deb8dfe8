"""Converter benchmark: float parity on every zoo model and conversion time at 224x224.

Writes benchmarks/results/converter.json and benchmarks/RESULTS_converter.md.

Run: PYTHONPATH=. python benchmarks/bench_converter.py [--quick]

Timing: each 224x224 model runs in a fresh process: the first (cold) conversion, one warm-up,
then the median of 3 conversions (graph capture + lowering + passes + writing the file). The
time of the capture alone (capture_graph) is measured the same way, to show what the rest of
the pipeline costs, and, interleaved in the same process, the capture through plain torch.export
(capture_graph's fallback) for comparison, median of 5 each.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "converter.json")
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


def _machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return {"nproc": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
            "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "note": "shared 2-core machine, other engineers' jobs running: timings are noisy upper bounds"}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(_timing_child(sys.argv[2])))
        return
    load_at_start = os.getloadavg()
    env = dict(os.environ, PYTHONPATH=ROOT)
    timing = {}
    for name in TARGETS:
        proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, env=env,
                              check=True)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        timing[name] = json.loads(line[7:])
        print(name, timing[name], flush=True)
    parity = _parity() if "--quick" not in sys.argv else {}
    data = {"machine": {**_machine(), "load_avg_at_start": load_at_start}, "timing_224": timing,
            "targets_s": TARGETS, "parity": parity,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
