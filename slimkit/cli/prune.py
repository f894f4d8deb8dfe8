"""``slimkit prune``: prune a model from a YAML file, optionally fine-tune, write model / masks / report."""

from __future__ import annotations

import argparse
import math
import os

from slimkit.cli import _common as common
from slimkit.cli._session import Session

HELP = "prune a model with a pruner and config_list from a YAML file"
EXAMPLE = """\
example:
  slimkit prune --config prune.yaml --model slimkit.models:DigitsCNN \\
                --data slimkit.models:load_digits_tensors --out out/

prune.yaml:
  algorithm: L1FilterPruner        # a slimkit.algorithms.pruning class, or package.module:Class
  arguments: {}                    # its keyword arguments (optional)
  config_list:
    - sparsity: 0.5
      op_types: [Conv2d]
    - exclude: true
      op_names: [conv1]
  fine_tune: {epochs: 2, lr: 0.001, batch_size: 64, optimizer: adam}   # optional, needs --data
  input_shape: [1, 1, 8, 8]        # optional: latency in report.md (else taken from --data)

writes out/model.pth (masks baked in; loads into the original class), out/mask.pth, out/report.md.
A factory returning a keras.Model (op_types: [Conv2D], ...; fine-tuned with model.fit) writes
out/model.weights.h5 (masks baked in; model.load_weights on the factory's model), out/mask.npz and
out/report.md
"""

KEYS = {
    "algorithm": common.IS_NAME,
    "arguments": common.IS_MAPPING,
    "config_list": common.IS_LIST,
    "fine_tune": common.IS_FINE_TUNE,
    "input_shape": common.IS_SHAPE,
    "seed": common.IS_SEED,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_arguments(parser, "YAML file: algorithm, arguments, config_list, fine_tune")
    parser.add_argument("--data", help="data loader as package.module:function (fine-tuning, accuracy)")
    common.add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from slimkit.analysis.report import layer_sparsity, measure, render_report, write_report
    from slimkit.errors import ConfigError

    session = Session(args, KEYS, common.pruner_registry(), "pruner")
    out, files = args.out, session.runtime.files
    before_metric = session.accuracy(session.model)
    before = measure(session.runtime.detached(session.model), example=session.example, metric=before_metric)
    pruner = session.build()
    try:
        model = pruner.compress()
    except ConfigError as error:
        raise common.located(session.doc, error) from None
    os.makedirs(out, exist_ok=True)  # after the config_list is validated: a bad one leaves no folder
    notes = [f"algorithm: {session.cls.__name__}", f"config: {os.path.abspath(args.config)}",
             f"model: {args.model}" + (f" (weights {args.weights})" if args.weights else "")]
    if "fine_tune" in session.settings:
        session.fit(model, [pruner])
        notes.append("fine-tuned: " + ", ".join(f"{k}={v}" for k, v in session.fine_tune.items()))
    model_path, mask_path = os.path.join(out, files.weights), os.path.join(out, files.masks)
    pruner.export_model(model_path=model_path, mask_path=mask_path)
    masks = pruner.get_masks()
    fresh = common.load_model(args.model, model_path)
    after_metric = session.accuracy(fresh)
    after = measure(fresh, example=session.example, metric=after_metric)
    if session.example is None:
        notes.append("latency not measured: give input_shape in the YAML or --data")
    notes += [session.runtime.latency_note] if session.runtime.latency_note else []
    notes.append("masked weights are zeros in a dense model: run `slimkit speedup` to shrink channels")
    layers = layer_sparsity(masks)
    report_path = os.path.join(out, "report.md")
    write_report(report_path, render_report(args.model, before, after, layers, notes))
    total = sum(math.prod(shape) * s for shape, s in layers.values())
    size = sum(math.prod(shape) for shape, _ in layers.values())
    common.say(f"pruned {len(layers)} layers with {session.cls.__name__}: {total / max(size, 1):.1%} of their "
               f"weights removed; non-zero parameters {before.nonzero:,} -> {after.nonzero:,}")
    if after_metric is not None:
        common.say(f"accuracy {before_metric:.4f} -> {after_metric:.4f}")
    common.say(f"wrote {model_path}", f"wrote {mask_path}", f"wrote {report_path}")
    return 0
