"""``slimkit inspect``: summarise a mask, ONNX or TFLite file; ``--compare`` debugs an int8 file per tensor."""

from __future__ import annotations

import argparse

from slimkit.cli import _common as common

HELP = "print a summary of a mask (.pth/.npz), .onnx or .tflite file"
EXAMPLE = """\
examples:
  slimkit inspect out/mask.pth        # sparsity per layer
  slimkit inspect out/model.onnx      # ops, tensors, dtypes, QDQ scales / zero points
  slimkit inspect out/model.tflite    # ops, tensors, dtypes, quantization parameters

  # SQNR per tensor of the fake-quant model and of the int8 file against the float model: the file written by
  # `slimkit quantize --tflite` with the same YAML file, model and data (calibration is run again, seeded)
  slimkit inspect out/model.tflite --compare --config ptq.yaml --model slimkit.models:DigitsCNN \\
                  --data slimkit.models:load_digits_tensors [--plot sqnr.png]
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the file to inspect")
    parser.add_argument("--compare", action="store_true", help="a .tflite file from `slimkit quantize --tflite`: "
                        "per-tensor SQNR of the fake-quant model and of the file against the float model")
    parser.add_argument("--config", help="--compare: the YAML file `slimkit quantize` was given")
    parser.add_argument("--model", help="--compare: model factory as package.module:function")
    parser.add_argument("--weights", help="--compare: state dict (.pth) to load into the model first")
    parser.add_argument("--data", help="--compare: data loader as package.module:function")
    parser.add_argument("--plot", help="--compare: also save the SQNR plot as this PNG (matplotlib)")
    parser.add_argument("--quiet", action="store_true", default=None, help="--compare: no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return compare(args)
    from slimkit.analysis.inspect import describe_file

    common.say(*describe_file(args.file))
    return 0


def compare(args: argparse.Namespace) -> int:
    from slimkit.analysis.quant_debug import quant_debug
    from slimkit.cli import quantize
    from slimkit.cli._session import Session
    from slimkit.errors import ConfigError

    missing = [f"--{name}" for name in ("config", "model", "data") if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"inspect --compare needs {', '.join(missing)}: the YAML file, model and data "
                          f"`slimkit quantize` was given. Received: no {', '.join(missing)}")
    session = Session(args, quantize.KEYS, quantize.quantizer_registry(), "quantizer", lr=1e-4,
                      data_keys=("calibration",), dummy_input_always=True)
    common.require_torch_model(session.model, args.model)
    if "fine_tune" in session.settings or "calibration" not in session.settings:
        raise session.doc.error(("algorithm",), "inspect --compare reruns post-training calibration only. Expected "
                                "a YAML file with calibration: and no fine_tune:")
    quantizer = session.build()
    model = quantizer.compress()
    batches = quantize.calibrate(session, quantizer, args.quiet)
    table = quant_debug(model.eval(), quantizer, batches[:1], args.file)
    common.say(f"{args.file}: SQNR per tensor against the float model, {table.samples} samples", "",
               table.to_markdown().rstrip("\n"))
    if args.plot:
        table.plot(args.plot)
        common.say(f"wrote {args.plot}")
    return 0
