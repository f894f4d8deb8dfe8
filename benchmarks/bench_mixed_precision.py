"""Mixed precision on real weights: digit-recognizer-py's MNIST CNN (390k parameters) on scikit-learn's digits.

Weights of every Conv2d / Linear get 4, 8 or 16 bits from :func:`slimkit.analysis.mixed_precision` under three
size budgets (bytes of weights); accuracy and top-1 agreement with the float model beside uniform 4 and 8 bits.
Run: PYTHONPATH=$PWD python benchmarks/bench_mixed_precision.py
"""

from __future__ import annotations

import copy
import importlib.util
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.analysis.mixed_precision import config_for, mixed_precision

PACKAGE = Path(importlib.util.find_spec("digit_recognizer").submodule_search_locations[0])


def load_cnn() -> torch.nn.Module:
    """The package's CNN with its weights; model.py is loaded alone (the package imports torchvision, absent here)."""
    spec = importlib.util.spec_from_file_location("digit_recognizer_model", PACKAGE / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.CNN().eval()
    model.load_state_dict(torch.load(PACKAGE / "models" / "handwriting_model.pth", map_location="cpu",
                                     weights_only=True))
    return model


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits upsampled to 28x28 with the package's MNIST normalisation."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    return (x - 0.1307) / 0.3081, torch.tensor(digits.target)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    return float((pred == y).float().mean()), float((pred == reference).float().mean())


def quantized_accuracy(model, config_list, calib, x, y, reference) -> tuple[float, float]:
    work = copy.deepcopy(model)
    quantizer = PostTrainingQuantizer(work, config_list, dummy_input=calib[0][:1])
    quantizer.compress()
    quantizer.calibrate(calib)
    return evaluate(work.eval(), x, y, reference)


def main() -> None:
    torch.manual_seed(0)
    model = load_cnn()
    x, y = data()
    calib = [x[i:i + 64] for i in range(0, 256, 64)]
    x_eval, y_eval = x[256:], y[256:]
    with torch.no_grad():
        reference = model(x_eval).argmax(dim=1)
    float_acc, _ = evaluate(model, x_eval, y_eval, reference)
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    numel = sum(dict(model.named_modules())[n].weight.numel() for n in layers)
    lines = ["## Mixed precision", "",
             f"digit-recognizer-py CNN (real weights, {numel:,} weights in {len(layers)} layers) on scikit-learn "
             f"digits upsampled to 28x28 (sensitivity on the first 256, evaluated on the other {len(y_eval)}); "
             "weights only, per-channel symmetric; candidates 4 / 8 / 16 bits. Float accuracy "
             f"{float_acc:.4f}. `python benchmarks/bench_mixed_precision.py`.", "",
             "| plan | weight bytes | bits per layer | accuracy | agreement with float | search s |",
             "|---|---:|---|---:|---:|---:|"]
    for width in (4, 8):
        acc, agree = quantized_accuracy(model, config_for({n: width for n in layers}), calib, x_eval, y_eval, reference)
        lines.append(f"| uniform {width} bits | {numel * width // 8:,} | {width} everywhere | {acc:.4f} | "
                     f"{agree:.4f} | |")
    for fraction in (0.55, 0.7, 0.85):
        budget = int(numel * fraction)
        start = time.perf_counter()
        plan = mixed_precision(model, calib, budget_bytes=budget)
        seconds = time.perf_counter() - start
        acc, agree = quantized_accuracy(model, plan.config_list, calib, x_eval, y_eval, reference)
        bits = ", ".join(f"{n}:{b}" for n, b in plan.bits.items())
        lines.append(f"| mixed, budget {budget:,} B ({8 * fraction:.1f} bits avg) | {plan.predicted_bytes:,} | "
                     f"{bits} | {acc:.4f} | {agree:.4f} | {seconds:.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
