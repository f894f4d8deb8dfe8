"""Whole-graph PTQ of the random-init Hugging Face MobileNetV2 (tests/hf_zoo.py): output SQNR of every conv / linear
along the network, fake-quant model against float -> benchmarks/results/whole_graph_sqnr.json.

Run: ``python benchmarks/bench_whole_graph_sqnr.py`` (about a minute). Six inputs calibrate (minmax), a seventh is
measured: each layer's output in the quantized model (after its fake quantization) against the float model's. Beside
it, with no quantization at all, the float model on that input plus Gaussian noise at 40 dB SQNR (about what the
first layer's int8 output carries): the same per-layer SQNR, which tells the network's own noise gain apart
from the quantizer's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slimkit.algorithms.quantization import PostTrainingQuantizer  # noqa: E402
from tests.hf_zoo import HF_ARCHS, hf_inputs  # noqa: E402

WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


def outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    found: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: found.__setitem__(name, out.detach().clone())) for name in names]
    with torch.no_grad():
        y = model(x)
    for hook in hooks:
        hook.remove()
    return y, found


def sqnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    return round(float(10 * torch.log10(reference.pow(2).mean() / (reference - other).pow(2).mean().clamp(min=1e-30))),
                 2)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)), 4)


def main() -> None:
    torch.manual_seed(0)
    reference, _ = HF_ARCHS["mobilenet_v2"]()
    model, _ = HF_ARCHS["mobilenet_v2"]()
    data = hf_inputs("mobilenet_v2", 7)
    names = [name for name, module in reference.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    ptq = PostTrainingQuantizer(model, WHOLE_GRAPH, dummy_input=data[0], progress=False)
    ptq.compress()
    ptq.calibrate(data[:6])
    want, float_out = outputs(reference, names, data[6])
    got, quant_out = outputs(model.eval(), names, data[6])
    x = data[6]
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * x.pow(2).mean().sqrt() * 10 ** -2
    perturbed, noisy_out = outputs(reference, names, noisy)
    layers = []
    for name in names:
        a = float_out[name]
        layers.append({"layer": name, "sqnr_db": sqnr(a, quant_out[name]),
                       "float_input_noise_40db_sqnr_db": sqnr(a, noisy_out[name]),
                       "float_absmax": round(float(a.abs().max()), 3), "float_std": round(float(a.std()), 4)})
    out = {"model": "tests/hf_zoo.py mobilenet_v2 (random init)", "calibration_inputs": 6,
           "output_cosine": cosine(want, got), "float_output_cosine_input_noise_40db": cosine(want, perturbed),
           "layers": layers}
    (ROOT / "benchmarks" / "results" / "whole_graph_sqnr.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
