"""``slimkit speedup``: make a pruned model's masks physical (fewer channels) and measure it."""

from __future__ import annotations

import argparse
import copy
import os

from slimkit.cli import _common as common

HELP = "shrink a pruned PyTorch model's channels with ModelSpeedup"
EXAMPLE = """\
example:
  slimkit prune --config prune.yaml --model slimkit.models:DigitsCNN --out out/
  slimkit speedup --model slimkit.models:DigitsCNN --weights out/model.pth \\
                  --masks out/mask.pth --input-shape 1,1,8,8 --out out/speedup/

writes out/speedup/model_speedup.pth (the smaller model's state dict: it loads into a model rebuilt by
running ModelSpeedup on the same masks), report.md (parameters and latency before / after) and,
with --onnx, model.onnx
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model factory as package.module:function")
    parser.add_argument("--weights", help="state dict (.pth) to load into the model first")
    parser.add_argument("--masks", required=True, help="mask file written by `slimkit prune` (mask.pth)")
    parser.add_argument("--input-shape", required=True, help="example input shape, e.g. 1,1,8,8")
    parser.add_argument("--onnx", action="store_true", help="also write the smaller model as model.onnx")
    parser.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    import torch

    from slimkit.analysis.report import layer_sparsity, measure, render_report, write_report
    from slimkit.frameworks.torch.onnx_export import export_onnx
    from slimkit.masks import load_masks
    from slimkit.speedup import ModelSpeedup
    from slimkit.utils.files import write_all
    from slimkit.utils.optional import require

    if args.onnx:
        require("onnxscript", "slimkit speedup --onnx")  # before anything is computed or written
    shape = common.parse_shape(args.input_shape)
    model = common.load_model(args.model, args.weights)
    common.require_torch_model(model, args.model)
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
    common.say(f"parameters {before.parameters:,} -> {after.parameters:,}; latency "
               f"{before.latency_ms:.3f} ms -> {after.latency_ms:.3f} ms",
               *[f"wrote {path}" for path in written], f"wrote {report_path}")
    return 0
