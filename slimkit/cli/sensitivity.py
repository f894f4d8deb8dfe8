"""``slimkit sensitivity``: per-layer pruning sensitivity, a plot, and a config_list meeting a budget."""

from __future__ import annotations

import argparse
import os

import yaml

from slimkit.cli import _common as common

HELP = "prune one layer at a time over a sparsity sweep and measure; propose a per-layer config"
EXAMPLE = """\
example:
  slimkit sensitivity --config sens.yaml --model slimkit.models:DigitsCNN \\
                      --weights trained.pth --out sens/

sens.yaml:
  algorithm: L1FilterPruner                    # a slimkit.algorithms.pruning class, or package.module:Class
  arguments: {}
  evaluate: slimkit.models:digits_accuracy     # evaluate(model) -> float
  sparsities: [0.25, 0.5, 0.75]
  op_types: [Conv2d, Linear]                   # optional (default); or op_names: [conv2, conv3]
  max_drop: 0.02                               # optional: write proposed.yaml within this budget
  higher_is_better: true                       # optional; false for a loss

writes sens/sensitivity.md, sens/sensitivity.png and (with max_drop) sens/proposed.yaml, a config
for `slimkit prune --config sens/proposed.yaml`
"""

_NAMES = common.Key(lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, str) and s for s in v),
                    "a non-empty list of names")
KEYS = {
    "algorithm": common.IS_NAME,
    "arguments": common.IS_MAPPING,
    "evaluate": common.Key(lambda v: isinstance(v, str) and ":" in v, "a function as 'package.module:name'", True),
    "sparsities": common.Key(lambda v: isinstance(v, list) and bool(v) and all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and 0 <= s < 1 for s in v),
        "a non-empty list of numbers in [0, 1)", True),
    "op_types": _NAMES,
    "op_names": _NAMES,
    "max_drop": common.Key(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                           "a number >= 0"),
    "higher_is_better": common.Key(lambda v: isinstance(v, bool), "true or false"),
    "seed": common.IS_SEED,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_arguments(parser, "YAML file: algorithm, evaluate, sparsities, ...")
    common.add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from slimkit.analysis.sensitivity import sensitivity
    from slimkit.errors import ConfigError
    from slimkit.utils.files import atomic_path
    from slimkit.utils.optional import require

    require("matplotlib", "slimkit sensitivity (its sensitivity.png)")  # before the sweep, not after it
    doc, settings = common.read_settings(args.config, KEYS)
    torch.manual_seed(settings.get("seed", 0))
    cls = common.lookup(common.pruner_registry(), settings["algorithm"], doc, ("algorithm",), "pruner")
    evaluate = common.load_object(settings["evaluate"], "evaluate function")
    model = common.load_model(args.model, args.weights)
    common.require_torch_model(model, args.model)
    try:
        table = sensitivity(model, evaluate, cls, settings["sparsities"],
                            tuple(settings.get("op_types", ("Conv2d", "Linear"))), op_names=settings.get("op_names"),
                            pruner_kwargs=settings.get("arguments", {}),
                            higher_is_better=settings.get("higher_is_better", True), quiet=args.quiet)
    except ConfigError as error:
        key = "op_names" if "op_names" in settings else "op_types"
        raise doc.error((key,), str(error)) from None
    os.makedirs(args.out, exist_ok=True)
    markdown = os.path.join(args.out, "sensitivity.md")
    with atomic_path(markdown) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(f"# Pruning sensitivity: {args.model} with {cls.__name__}\n\n" + table.to_markdown() +
                     "\nMost sensitive first: " + ", ".join(table.ranking()) + "\n")
    plot = os.path.join(args.out, "sensitivity.png")
    table.plot(plot, title=f"{cls.__name__} sensitivity")
    common.say(table.to_markdown().rstrip(), "most sensitive first: " + ", ".join(table.ranking()),
               f"wrote {markdown}", f"wrote {plot}")
    if "max_drop" in settings:
        config_list = table.propose_config(settings["max_drop"])
        proposed = os.path.join(args.out, "proposed.yaml")
        if not config_list:
            common.say(f"no layer stays within max_drop={settings['max_drop']}; {proposed} not written")
            return 0
        text = (f"# Proposed by `slimkit sensitivity` from {os.path.basename(args.config)}: for each layer the "
                f"highest sparsity whose\n# metric drop (one layer pruned at a time) stays within "
                f"max_drop={settings['max_drop']}.\n")
        text += yaml.safe_dump({"algorithm": cls.__name__, "arguments": settings.get("arguments", {}),
                                "config_list": config_list}, sort_keys=False, default_flow_style=None)
        with atomic_path(proposed) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        common.say(f"wrote {proposed}: {len(config_list)} layers")
    return 0
