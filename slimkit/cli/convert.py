"""``slimkit convert``: write a model as a TFLite flatbuffer: PyTorch with slimkit's converter, Keras with
TensorFlow's (``slimkit.frameworks.tensorflow.export_tflite``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from slimkit.cli import _common as common

HELP = "convert a PyTorch or Keras model to a .tflite file"
EXAMPLE = """\
example:
  slimkit convert --model slimkit.models:DigitsCNN --weights out/model.pth \\
                  --input-shape 1,1,8,8 --out out/model.tflite
  slimkit convert --model mymodels:keras_cnn --weights out/model.weights.h5 --out out/keras.tflite
  slimkit inspect out/model.tflite

a factory returning a keras.Model is written by TensorFlow's converter (float32; --input-shape is then
optional: the model's keras.Input gives it); with --masks (the .npz a Keras pruner exports) the smaller
model Keras ModelSpeedup builds is written
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model factory as package.module:function")
    parser.add_argument("--weights", help="weights to load into the model first: a PyTorch state dict (.pth), "
                        "a Keras .weights.h5 / .keras file")
    parser.add_argument("--masks", help="mask file: shrink channels with ModelSpeedup before converting")
    parser.add_argument("--input-shape", help="example input shape, e.g. 1,1,8,8 (required for PyTorch models)")
    parser.add_argument("--out", required=True, help="the .tflite file to write")


def _torch(model: Any, args: argparse.Namespace) -> None:
    import torch

    from slimkit.converter import TFLiteConverter

    example = torch.randn(*common.require_input_shape(args))
    model.eval()
    if args.masks:
        common.speed_up(model, args.masks, example)
    TFLiteConverter(model, example, args.out).convert()


def _keras(model: Any, args: argparse.Namespace) -> None:
    from slimkit.frameworks.tensorflow import export_tflite

    if args.masks:
        model, _ = common.keras_speed_up(model, args.masks, args.input_shape)
    elif args.input_shape:
        common.keras_example(model, args.input_shape)  # checked; the model's keras.Input gives the shape
    export_tflite(model, args.out)


# framework (slimkit.compression.adapter.framework_of) -> how its models are written
CONVERTERS: dict[str, Callable[[Any, argparse.Namespace], None]] = {"torch": _torch, "keras": _keras}


def run(args: argparse.Namespace) -> int:
    from slimkit.compression.adapter import framework_of

    model = common.load_model(args.model, args.weights)
    CONVERTERS[framework_of(model)](model, args)
    common.say(f"wrote {args.out}")
    return 0
