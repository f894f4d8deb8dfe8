"""Exactness of ``emulate_integer()`` against LiteRT on int8 transformer encoders.

For BERT and DistilBERT (tests/hf_zoo.py, random init) and the real all-MiniLM-L6-v2 (tests/realmodels/minilm.py):
whole-graph PTQ (minmax), conversion, then the file (LiteRT, XNNPACK) and the emulation on held-out inputs. Prints
the share of outputs that are exactly equal, the share within 1e-6 (MiniLM's embedding is computed in float after
the last int8 tensor: mean pooling, L2 normalisation) and the largest difference.

    PYTHONPATH=$PWD python benchmarks/bench_int8_emulation.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from slimkit.converter import TFLiteConverter  # noqa: E402
from slimkit.converter.verify import run_tflite  # noqa: E402

CONFIG = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


def _zoo(name: str) -> tuple[torch.nn.Module, list, list]:
    from tests.hf_zoo import HF_ARCHS, hf_inputs

    model, _ = HF_ARCHS[name]()
    return model, hf_inputs(name, 4, seed=1), hf_inputs(name, 32, seed=7)


def _minilm() -> tuple[torch.nn.Module, list, list]:
    from tests.realmodels.minilm import corpus, load_encoder, token_ids

    texts = corpus()
    ids = [token_ids(texts[i:i + 4]) for i in range(0, 48, 4)]
    return load_encoder(), ids[:2], ids[2:]


def measure(model: torch.nn.Module, calibration: list, tests: list) -> dict:
    quantizer = PostTrainingQuantizer(model, CONFIG, algorithm="minmax", dummy_input=calibration[0])
    quantizer.compress()
    quantizer.calibrate(calibration)
    model.eval()
    path = os.path.join(tempfile.mkdtemp(), "model.tflite")
    TFLiteConverter(model, calibration[0], path).convert()
    equal = close = total = 0
    worst = 0.0
    for x in tests:
        got = run_tflite(path, [x.numpy()])[0]
        with torch.no_grad(), quantizer.emulate_integer():
            expected = model(x).numpy().reshape(got.shape)
        equal += int((got == expected).sum())
        close += int((np.abs(got - expected) <= 1e-6).sum())
        total += got.size
        worst = max(worst, float(np.abs(got - expected).max()))
    return {"equal": equal, "outputs": total, "share_equal": round(equal / total, 4),
            "share_within_1e-6": round(close / total, 4), "max_abs_diff": worst}


def main() -> None:
    results = {}
    for name, build in (("bert", lambda: _zoo("bert")), ("distilbert", lambda: _zoo("distilbert")),
                        ("minilm", _minilm)):
        torch.manual_seed(0)
        results[name] = measure(*build())
        print(name, results[name], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
