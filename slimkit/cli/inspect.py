"""``slimkit inspect``: summarise a mask file, an ONNX model or a TFLite flatbuffer."""

from __future__ import annotations

import argparse

from slimkit.cli import _common as common

HELP = "print a summary of a mask (.pth/.npz), .onnx or .tflite file"
EXAMPLE = """\
examples:
  slimkit inspect out/mask.pth        # sparsity per layer
  slimkit inspect out/model.onnx      # ops, tensors, dtypes, QDQ scales / zero points
  slimkit inspect out/model.tflite    # ops, tensors, dtypes, quantization parameters
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the file to inspect")


def run(args: argparse.Namespace) -> int:
    from slimkit.analysis.inspect import describe_file

    common.say(*describe_file(args.file))
    return 0
