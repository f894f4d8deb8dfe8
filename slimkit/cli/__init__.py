"""The ``slimkit`` command: one module per subcommand, registered in :data:`COMMANDS`.

Each subcommand module defines ``HELP`` (one line), ``EXAMPLE`` (shown by ``--help``),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported when their subcommand
runs (or ``--help`` is built), and heavy libraries only inside ``run``.

Example:

>>> from slimkit.cli import COMMANDS, build_parser
>>> sorted(COMMANDS)
['config', 'convert', 'inspect', 'prune', 'quantize', 'sensitivity', 'speedup']
>>> build_parser().parse_args(['inspect', 'mask.pth']).file
'mask.pth'
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from slimkit.errors import SlimkitError

COMMANDS: dict[str, str] = {
    "prune": "slimkit.cli.prune",
    "config": "slimkit.cli.config",
    "sensitivity": "slimkit.cli.sensitivity",
    "quantize": "slimkit.cli.quantize",
    "speedup": "slimkit.cli.speedup",
    "convert": "slimkit.cli.convert",
    "inspect": "slimkit.cli.inspect",
}
"""Subcommand name -> module. Adding a subcommand is one module plus one line here."""

EXAMPLE = """\
examples:
  slimkit prune --config prune.yaml --model slimkit.models:DigitsCNN \
                --data slimkit.models:load_digits_tensors --out out/
  slimkit config generate --config prune.yaml --model slimkit.models:DigitsCNN --out layers.yaml
  slimkit inspect out/mask.pth

--model / --data / evaluate name a function as package.module:name: your own (mypkg.factories:build,
with mypkg/ in the current folder or on PYTHONPATH) or one that ships (slimkit.models:DigitsCNN).

run `slimkit COMMAND --help` for each command's options and an example
"""


def build_parser() -> argparse.ArgumentParser:
    import slimkit

    parser = argparse.ArgumentParser(prog="slimkit", description="Compress models: prune, quantize, speed up, "
                                     "convert and inspect.", epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"slimkit {slimkit.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=module.HELP, description=module.HELP, epilog=module.EXAMPLE,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        child.set_defaults(_module=module_name)
        module.add_arguments(child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``slimkit`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Exit status: 0 on success, 2 on a user error (the message is printed to stderr), 130 on Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except SlimkitError as error:
        print(f"slimkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimkit: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "build_parser", "main"]
