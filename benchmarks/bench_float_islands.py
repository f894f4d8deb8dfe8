"""Can ``emulate_integer()`` compute the float islands of an int8 file exactly (issue 13, item 1)?

Each island an int8 file keeps in float32 (LayerNorm, Hugging Face's RMSNorm, the rotary embedding, softmax as
``scaled_dot_product_attention`` writes it, SiLU, LSTM, GRU) is converted alone, as slimkit writes it inside an int8
file (the same ops), and run in LiteRT (XNNPACK, 1 thread) on random inputs. Its float32 outputs are compared bit for
bit with (a) PyTorch's ops, what the emulation computes, and (b) numpy float32 computing the file's own ops in the
file's order (correctly rounded RSQRT / EXP), and both are rounded onto an int8 grid spanning the outputs (the QUANTIZE
that follows the island) to count the integers that move -> benchmarks/results/float_islands.json and
benchmarks/RESULTS_float_islands.md.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_float_islands.py`` (about half a minute on 2 cores).
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_info import describe_machine  # noqa: E402

from slimkit.converter import TFLiteConverter  # noqa: E402
from slimkit.converter.verify import run_tflite  # noqa: E402
from tests.converter.conftest import op_codes  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
SHAPE = (256, 8, 16)  # 256 sequences of 8 tokens of 16 features per draw
DRAWS = 8
F32 = np.float32


class Fn(nn.Module):
    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _rsqrt(v):
    return (1.0 / np.sqrt(v.astype(np.float64))).astype(F32)


def _mean(x):
    return x.mean(-1, keepdims=True, dtype=F32)


def _layer_norm_file(x, norm):
    d = x - _mean(x)
    y = d * _rsqrt(_mean(d * d) + F32(norm.eps))
    return y * norm.weight.detach().numpy() + norm.bias.detach().numpy()


def _rms_norm_file(x, norm):
    return norm.weight.detach().numpy() * (x * _rsqrt(_mean(x * x) + F32(norm.variance_epsilon)))


def _rotary(x):
    cos, sin = torch.cos(torch.arange(16.0) / 3), torch.sin(torch.arange(16.0) / 3)
    return x * cos + torch.cat((-x[..., 8:], x[..., :8]), -1) * sin


def _rotary_file(x):
    cos, sin = torch.cos(torch.arange(16.0) / 3).numpy(), torch.sin(torch.arange(16.0) / 3).numpy()  # constants
    return x * cos + np.concatenate((-x[..., 8:], x[..., :8]), -1) * sin


def _softmax_file(x):
    e = np.exp((x - x.max(-1, keepdims=True)).astype(np.float64)).astype(F32)
    return e / e.sum(-1, keepdims=True, dtype=F32)


def _silu_file(x):
    return x * (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(F32)


def islands() -> dict[str, tuple[nn.Module, Callable | None]]:
    """Island -> (the float module, numpy float32 in the file's op order or None where that is the kernel's own)."""
    torch.manual_seed(0)
    layer_norm = nn.LayerNorm(16)
    nn.init.normal_(layer_norm.weight, 1.0, 0.2), nn.init.normal_(layer_norm.bias, 0.0, 0.2)
    rms = transformers.models.llama.modeling_llama.LlamaRMSNorm(16)
    nn.init.normal_(rms.weight, 1.0, 0.2)
    lstm, gru = nn.LSTM(16, 16, batch_first=True), nn.GRU(16, 16, batch_first=True)
    return {
        "LayerNorm": (layer_norm, lambda x: _layer_norm_file(x, layer_norm)),
        "RMSNorm (HF Llama)": (rms, lambda x: _rms_norm_file(x, rms)),
        "rotary embedding": (Fn(_rotary), _rotary_file),
        "softmax (SDPA's)": (Fn(lambda x: torch.softmax(x, -1)), _softmax_file),
        "SiLU": (Fn(F.silu), _silu_file),
        "x / 3 (MUL by 1/3)": (Fn(lambda x: x / 3), lambda x: x * F32(1 / 3)),
        "x / 2 (MUL by 0.5)": (Fn(lambda x: x / 2), lambda x: x * F32(0.5)),
        "MEAN alone": (Fn(lambda x: x.mean(-1, keepdim=True)), _mean),
        "RSQRT alone": (Fn(lambda x: torch.rsqrt(x.abs() + 0.1)), lambda x: _rsqrt(np.abs(x) + F32(0.1))),
        "LSTM": (Fn(lambda x: lstm(x)[0]), None),
        "GRU": (Fn(lambda x: gru(x)[0]), None),
    }


def _int8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scale = (high - low) / 255
    return np.clip(np.rint(values / scale) + np.rint(-128 - low / scale), -128, 127)


def measure(name: str, module: nn.Module, in_file_order: Callable | None, directory: str) -> dict:
    module.eval()
    path = Path(directory) / "island.tflite"
    generator = torch.Generator().manual_seed(1)
    draws = [torch.randn(SHAPE, generator=generator) * 2 for _ in range(DRAWS)]
    TFLiteConverter(module, draws[0], path).convert()
    got, torch_out, numpy_out = [], [], []
    for x in draws:
        with torch.no_grad():
            torch_out.append(module(x).numpy())
        got.append(run_tflite(path, [x.numpy()])[0])
        if in_file_order is not None:
            numpy_out.append(in_file_order(x.numpy()))
    got, reference = np.concatenate(got), np.concatenate(torch_out)
    low, high = float(reference.min()), float(reference.max())
    row = {"island": name, "file_ops": sorted(set(op_codes(path))), "elements": int(got.size),
           "torch_bits_differ": int((got != reference).sum()),
           "torch_int8_differ": int((_int8(got, low, high) != _int8(reference, low, high)).sum()),
           "torch_int8_max_steps": int(np.abs(_int8(got, low, high) - _int8(reference, low, high)).max()),
           "torch_max_abs": float(np.abs(got - reference).max())}
    if numpy_out:
        ordered = np.concatenate(numpy_out)
        row.update(numpy_bits_differ=int((got != ordered).sum()),
                   numpy_int8_differ=int((_int8(got, low, high) != _int8(ordered, low, high)).sum()))
    return row


def markdown(rows: list[dict], machine: dict) -> str:
    lines = ["# Float islands of int8 files: can the emulation compute them exactly? (issue 13, item 1)", "",
             "Script: `benchmarks/bench_float_islands.py`. Each island slimkit's int8 files keep in float32 is "
             "converted alone (the same ops as inside an int8 file) and run in LiteRT (XNNPACK, 1 thread) on "
             f"{DRAWS} random draws of shape {SHAPE} (N(0, 2)). Its float32 outputs are compared bit for bit with "
             "PyTorch's ops (what `emulate_integer()` computes) and with numpy float32 computing the file's own ops "
             "in the file's order (RSQRT, EXP, LOGISTIC correctly rounded); 'int8 moved' rounds both onto an int8 "
             "grid spanning the outputs (the QUANTIZE after the island) and counts the integers that differ.", "",
             f"**Machine**: {machine['cpu']}, torch {machine.get('torch', '?')}, "
             f"ai-edge-litert {machine.get('ai_edge_litert', '?')}.", "",
             "| island | file ops | elements | bits differ vs PyTorch | int8 moved vs PyTorch | max abs vs PyTorch "
             "| bits differ vs file order in numpy | int8 moved vs file order |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['island']} | {', '.join(r['file_ops'])} | {r['elements']:,} | {r['torch_bits_differ']:,} "
                     f"| {r['torch_int8_differ']:,} | {r['torch_max_abs']:.3g} | "
                     f"{format(r['numpy_bits_differ'], ',') if 'numpy_bits_differ' in r else 'n/a'} | "
                     f"{format(r['numpy_int8_differ'], ',') if 'numpy_int8_differ' in r else 'n/a'} |")
    exact = [r["island"] for r in rows if r["torch_bits_differ"] == 0]
    rewritten = [r["island"] for r in rows if r["torch_bits_differ"] and r.get("numpy_bits_differ", 1) == 0]
    inexact = [r for r in rows
               if r["torch_bits_differ"] and r["island"] not in rewritten and "alone" not in r["island"]]
    shares = [r["torch_bits_differ"] / r["elements"] for r in inexact]
    moved = sum(r["torch_int8_differ"] for r in inexact)
    lines += ["", f"Bit-identical to PyTorch: {', '.join(exact) or 'none'} (correctly rounded MUL / NEG / ADD and "
              f"moves); `verify()` does not name such ops. {', '.join(rewritten)}: the file's op gives numpy's bits "
              "but not PyTorch's (a division by a constant other than a power of two is written as a MUL by its "
              "float32 reciprocal), so `verify()` names it too. Every other island differs from PyTorch in "
              f"{min(shares):.0%}-{max(shares):.0%} of its float32 elements, and the normalisations, softmax and "
              "SiLU differ even from numpy computing the file's own ops in the file's order: XNNPACK's MEAN sums in "
              "its own order and its RSQRT (like PyTorch's) is not correctly rounded ('alone' rows), its SOFTMAX and "
              "LOGISTIC are its own approximations (LSTM / GRU: LiteRT's "
              "cell kernels, not written out here). Computing them exactly would mean reproducing XNNPACK's "
              "CPU-specific microkernels, so these islands are named instead (`VerifyResult.float_layers`, "
              "`TFLiteConverter.float_islands()`). After rounding to int8, "
              f"{moved} of {sum(r['elements'] for r in inexact):,} integers moved (by at most "
              f"{max(r['torch_int8_max_steps'] for r in inexact)} step), so an int8 file's "
              "outputs agree on most inputs but are not guaranteed to."]
    return "\n".join(lines) + "\n"


def main() -> None:
    import ai_edge_litert

    machine = describe_machine(torch=torch.__version__, ai_edge_litert=getattr(ai_edge_litert, "__version__", "?"))
    with tempfile.TemporaryDirectory() as directory:
        rows = [measure(name, module, order, directory) for name, (module, order) in islands().items()]
    for row in rows:
        print(row)
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "float_islands.json").write_text(json.dumps(
        {"machine": machine, "rows": rows}, indent=1))
    (ROOT / "benchmarks" / "RESULTS_float_islands.md").write_text(markdown(rows, machine))


if __name__ == "__main__":
    main()
