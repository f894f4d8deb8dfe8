"""``slimkit convert``: write a PyTorch model as a TFLite flatbuffer with slimkit's converter."""

from __future__ import annotations

import argparse

from slimkit.cli import _common as common

HELP = "convert a PyTorch model to a .tflite file (TFLiteConverter)"
EXAMPLE = """\
example:
  slimkit convert --model slimkit.models:DigitsCNN --weights out/model.pth \\
                  --input-shape 1,1,8,8 --out out/model.tflite
  slimkit inspect out/model.tflite
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model factory as package.module:function")
    parser.add_argument("--weights", help="state dict (.pth) to load into the model first")
    parser.add_argument("--masks", help="mask file: shrink channels with ModelSpeedup before converting")
    parser.add_argument("--input-shape", required=True, help="example input shape, e.g. 1,1,8,8")
    parser.add_argument("--out", required=True, help="the .tflite file to write")


def run(args: argparse.Namespace) -> int:
    import torch

    from slimkit.converter import TFLiteConverter

    shape = common.parse_shape(args.input_shape)
    model = common.load_model(args.model, args.weights).eval()
    example = torch.randn(*shape)
    if args.masks:
        common.speed_up(model, args.masks, example)
    TFLiteConverter(model, example, args.out).convert()
    common.say(f"wrote {args.out}")
    return 0
