"""``slimkit speedup``: make a pruned model's masks physical (fewer channels) and measure it."""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable
from typing import Any

from slimkit.cli import _common as common
from slimkit.errors import SlimkitError

HELP = "shrink a pruned PyTorch or Keras model's channels with ModelSpeedup"
EXAMPLE = """\
example:
  slimkit prune --config prune.yaml --model slimkit.models:DigitsCNN --out out/
  slimkit speedup --model slimkit.models:DigitsCNN --weights out/model.pth \\
                  --masks out/mask.pth --input-shape 1,1,8,8 --out out/speedup/
  slimkit speedup --model mymodels:keras_cnn --weights out/model.weights.h5 --masks out/mask.npz \\
                  --out out/keras_speedup/

writes out/speedup/model_speedup.pth (the smaller model's state dict: it loads into a model rebuilt by
running ModelSpeedup on the same masks), report.md (parameters and latency before / after) and,
with --onnx, model.onnx. A factory returning a keras.Model (masks: the .npz a Keras pruner exports;
--input-shape optional, the model's keras.Input gives it) writes model_speedup.keras (the smaller
model, architecture and weights: keras.models.load_model reads it) and report.md (layers, parameters
and MACs before / after)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model factory as package.module:function")
    parser.add_argument("--weights", help="weights to load into the model first: a PyTorch state dict (.pth), "
                        "a Keras .weights.h5 / .keras file")
    parser.add_argument("--masks", required=True, help="mask file written by `slimkit prune` (mask.pth) or a Keras "
                        "pruner's export (mask.npz)")
    parser.add_argument("--input-shape", help="example input shape, e.g. 1,1,8,8 (required for PyTorch models)")
    parser.add_argument("--onnx", action="store_true", help="also write the smaller model as model.onnx "
                        "(PyTorch models)")
    parser.add_argument("--out", required=True, help="output directory")


def _torch(model: Any, args: argparse.Namespace) -> list[str]:
    import torch

    from slimkit.analysis.report import layer_sparsity, measure, render_report, write_report
    from slimkit.frameworks.torch.onnx_export import export_onnx
    from slimkit.masks import load_masks
    from slimkit.speedup import ModelSpeedup
    from slimkit.utils.files import write_all
    from slimkit.utils.optional import require

    if args.onnx:
        require("onnxscript", "slimkit speedup --onnx")  # before anything is computed or written
    shape = common.require_input_shape(args)
    masks = load_masks(args.masks)
    example = torch.randn(*shape)
    before = measure(copy.deepcopy(model), example=example)
    model.eval()
    ModelSpeedup(model, example, masks).speedup_model()
    after = measure(model, example=example)
    os.makedirs(args.out, exist_ok=True)
    state_path = os.path.join(args.out, "model_speedup.pth")
    onnx_path = os.path.join(args.out, "model.onnx") if args.onnx else None
    write_all([(state_path, lambda tmp: torch.save(model.state_dict(), tmp)),  # both files or neither
               (onnx_path, lambda tmp: export_onnx(model, tmp, shape))])
    written = [path for path in (state_path, onnx_path) if path is not None]
    report_path = os.path.join(args.out, "report.md")
    write_report(report_path, render_report(args.model, before, after, layer_sparsity(masks),
                                            [f"masks: {args.masks}", "after: channels physically removed"]))
    return [f"parameters {before.parameters:,} -> {after.parameters:,}; latency "
            f"{before.latency_ms:.3f} ms -> {after.latency_ms:.3f} ms",
            *[f"wrote {path}" for path in written], f"wrote {report_path}"]


def _keras(model: Any, args: argparse.Namespace) -> list[str]:
    from slimkit.analysis.report import write_report
    from slimkit.frameworks.tensorflow.export import save_model

    if args.onnx:
        raise SlimkitError(f"--onnx on the Keras model {args.model!r}: slimkit writes ONNX for PyTorch models only. "
                           "Expected no --onnx: `slimkit convert --masks` writes the smaller Keras model as TFLite. "
                           "Received: --onnx")
    small, report = common.keras_speed_up(model, args.masks, args.input_shape)
    model_path = os.path.join(args.out, "model_speedup.keras")
    save_model(small, model_path)
    report_path = os.path.join(args.out, "report.md")
    write_report(report_path, "\n".join([f"# Speedup report: {args.model}", "", "```", str(report), "```", "",
                                         f"masks: {args.masks}", "after: channels physically removed", ""]))
    return [f"parameters {report.params_before:,} -> {report.params_after:,}; MACs {report.flops_before:,} -> "
            f"{report.flops_after:,}", f"wrote {model_path}", f"wrote {report_path}"]


# framework (slimkit.compression.adapter.framework_of) -> how its models are sped up and written
SPEEDUPS: dict[str, Callable[[Any, argparse.Namespace], list[str]]] = {"torch": _torch, "keras": _keras}


def run(args: argparse.Namespace) -> int:
    from slimkit.compression.adapter import framework_of

    model = common.load_model(args.model, args.weights)
    common.say(*SPEEDUPS[framework_of(model)](model, args))
    return 0
