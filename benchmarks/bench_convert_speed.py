"""Conversion time of slimkit's int8 and float files at 224x224 (issue 13's figure: at least 10x faster than
litert-torch), in process CPU seconds as well as wall seconds, since the machine is shared.

The setting of ``bench_litert_torch.py``: random weights (seed 0) with BatchNorm statistics settled on random images,
a 1x3x224x224 example and 16 calibration images (4 batches of 4), ``PostTrainingQuantizer(minmax)`` on the whole graph
(``op_types: ['default']``), then ``TFLiteConverter(...).convert()`` (the file validated in LiteRT, as by default).
Each model runs in a fresh process: one small ``torch.export`` first (its one-time start-up is charged to nothing),
the float file (its conversion also starts the validating worker), then ``--repeat`` int8 rounds on fresh copies
of the float model, each timing the quantization (prepare + calibrate) and the conversion (``--captures N``: then the
eager check + capture alone, ``TFLiteConverter.capture()``, N more times). ``--slimkit DIR`` imports
slimkit from another checkout (a ``git archive`` of an earlier commit), to time before and after in alternation.

Run: PYTHONPATH=. python benchmarks/bench_convert_speed.py [--models resnet18 ...] [--repeat 2] [--slimkit DIR]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("resnet18", "resnet50", "mobilenet_v2")


def _timed(fn) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return {"cpu_s": round(time.process_time() - cpu, 3), "wall_s": round(time.perf_counter() - wall, 3)}


def slimkit_quantize(model, example, calibration) -> None:
    """``PostTrainingQuantizer(minmax)`` on the whole graph, as ``bench_litert_torch.slimkit_int8``."""
    from bench_litert_torch import WHOLE_GRAPH

    from slimkit.algorithms.quantization import PostTrainingQuantizer

    ptq = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=example)
    ptq.compress()
    ptq.calibrate(calibration)
    model.eval()


def child(name: str, repeat: int, threads: int, captures_each: int) -> dict:
    """The figures of one model, in this process."""
    import torch

    # slimkit first, from PYTHONPATH (--slimkit): importing bench_litert_torch puts this checkout first on sys.path
    slimkit = importlib.import_module("slimkit")
    from bench_litert_torch import image_case, warm_up

    from slimkit.converter import TFLiteConverter

    torch.set_num_threads(threads)
    warm_up()
    float_model, example, calibration, _ = image_case(name, 224, 4)
    path = os.path.join(tempfile.mkdtemp(), f"{name}.tflite")
    result = {"slimkit": os.path.dirname(os.path.dirname(slimkit.__file__)), "threads": threads,
              "float": _timed(lambda: TFLiteConverter(float_model, example, path).convert()),
              "int8": []}
    for _ in range(repeat):
        load = os.getloadavg()[0]
        model = copy.deepcopy(float_model)
        quantized = _timed(lambda model=model: slimkit_quantize(model, example, calibration))
        converted = _timed(lambda model=model: TFLiteConverter(model, example, path).convert())
        captures = [_timed(lambda model=model: TFLiteConverter(model, example, path).capture())["cpu_s"]
                    for _ in range(captures_each)]
        result["int8"].append({"quantize": quantized, "convert": converted, "load_before": round(load, 2),
                               "load_after": round(os.getloadavg()[0], 2), "capture_cpu_s": captures})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1: CPU seconds without idle spinning)")
    parser.add_argument("--captures", type=int, default=0,
                        help="also time the eager check + capture alone this many times per int8 round (CPU s)")
    parser.add_argument("--slimkit", help="import slimkit from this directory instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeat, args.threads, args.captures)))
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [p for p in (args.slimkit, os.path.dirname(HERE), os.environ.get("PYTHONPATH")) if p]))
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--repeat", str(args.repeat),
                              "--threads", str(args.threads), "--captures", str(args.captures)], env=env,
                             capture_output=True, text=True, check=True).stdout
        print(json.dumps({"model": name, **json.loads(out)}), flush=True)


if __name__ == "__main__":
    main()
