"""``slimkit quantize``: quantize a model from a YAML file (QAT fine-tuning or post-training calibration)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from slimkit.cli import _common as common
from slimkit.cli._session import Session
from slimkit.compression.adapter import framework_of
from slimkit.errors import SlimkitError

HELP = "quantize a model with a quantizer and config_list from a YAML file"
EXAMPLE = """\
example:
  slimkit quantize --config qat.yaml --model slimkit.models:DigitsCNN \\
                   --data slimkit.models:load_digits_tensors --out out/

qat.yaml:
  algorithm: QATQuantizer          # any class in slimkit.algorithms.quantization
  arguments: {}
  config_list:
    - quant_types: [weight, output]
      quant_bits: {weight: 8, output: 8}
      op_types: [Conv2d, Linear]
  fine_tune: {epochs: 1, lr: 0.0001}   # QAT: train with fake-quant (needs --data)
  calibration: {batches: 8}            # PostTrainingQuantizer: calibrate on this many batches
  input_shape: [1, 1, 8, 8]

writes out/model.pth (float weights), out/calibration.pth (scales, zero points, bits per layer),
out/report.md and, with --tflite, out/model.tflite. A factory returning a keras.Model (op_types:
[Conv2D, Dense] or [default]; QAT with model.fit) writes out/model.weights.h5 (out/model.keras with
--masks: the smaller model), out/calibration.json, out/report.md and, with --tflite, the int8 file
export_tflite writes from the quantizer's parameters
"""

KEYS = {
    "algorithm": common.IS_NAME,
    "arguments": common.IS_MAPPING,
    "config_list": common.IS_LIST,
    "fine_tune": common.IS_FINE_TUNE,
    "calibration": common.Key(lambda v: isinstance(v, dict), "a mapping such as {batches: 8}"),
    "input_shape": common.IS_SHAPE,
    "seed": common.IS_SEED,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_arguments(parser, "YAML file: algorithm, arguments, config_list, ...")
    parser.add_argument("--masks", help="mask file of a pruned model: speed the model up with it before quantizing")
    parser.add_argument("--data", help="data loader as package.module:function (QAT, calibration, accuracy)")
    parser.add_argument("--tflite", action="store_true", help="also write out/model.tflite with TFLiteConverter")
    common.add_output_arguments(parser)


def quantizer_registry() -> dict[str, type]:
    from slimkit.algorithms import quantization
    from slimkit.compression import Quantizer

    return common.registry_of(quantization, Quantizer)


def run(args: argparse.Namespace) -> int:
    from slimkit.analysis.report import measure, render_report, write_report

    session = Session(args, KEYS, quantizer_registry(), "quantizer", lr=1e-4, data_keys=("fine_tune", "calibration"),
                      dummy_input_always=True)
    settings, cls, files = session.settings, session.cls, session.runtime.files
    if args.masks:
        if session.example is None:
            raise SlimkitError("--masks needs an example input to trace the model. Expected input_shape in the "
                               "YAML file or --data. Received: neither")
        session.model = session.runtime.speed_up(session.model, args.masks, session.example)
    before_metric = session.accuracy(session.model)
    before = measure(session.runtime.detached(session.model), example=session.example, metric=before_metric)
    quantizer: Any = session.build()
    os.makedirs(args.out, exist_ok=True)  # after the config_list is validated: a bad one leaves no folder
    model = quantizer.compress()
    batches = calibrate(session, quantizer, args.quiet)
    if "fine_tune" in settings:
        session.fit(model, [quantizer])
    model_path = os.path.join(args.out, files.reshaped if args.masks else files.weights)
    calibration_path = os.path.join(args.out, files.calibration)
    calibration = quantizer.export_model(model_path=model_path, calibration_path=calibration_path) or {}
    after_metric = session.accuracy(model)
    after = measure(model, example=session.example, metric=after_metric)
    written = [model_path, calibration_path]
    notes = [f"algorithm: {cls.__name__}", "after: the model with fake quantization (float kernels)"]
    notes += [session.runtime.latency_note] if session.runtime.latency_note else []
    if args.tflite:
        written.append(os.path.join(args.out, "model.tflite"))
        TFLITE_WRITERS[framework_of(model)](model, quantizer, session, batches, written[-1])
        notes.append(f"model.tflite: {os.path.getsize(written[-1]):,} bytes")
    report_path = os.path.join(args.out, "report.md")
    write_report(report_path, render_report(args.model, before, after, notes=notes,
                                            layer_table=quantization_table(calibration)))
    common.say(f"quantized {len(calibration)} layers with {cls.__name__}", *[f"wrote {p}" for p in written],
               f"wrote {report_path}")
    return 0


def _torch_tflite(model: Any, quantizer: Any, session: Session, batches: list[Any], path: str) -> None:
    from slimkit.converter import TFLiteConverter

    TFLiteConverter(model.eval(), session.example, path).convert()


def _keras_tflite(model: Any, quantizer: Any, session: Session, batches: list[Any], path: str) -> None:
    """int8 with the quantizer's parameters; tensors it leaves out are calibrated on the calibration batches (or the
    example input)."""
    from slimkit.frameworks.tensorflow import export_tflite

    export_tflite(model, path, quantizer=quantizer, representative_data=batches or [session.example])


# framework (slimkit.compression.adapter.framework_of) -> how `--tflite` writes its quantized models
TFLITE_WRITERS: dict[str, Callable[[Any, Any, Session, list[Any], str], None]] = {"torch": _torch_tflite,
                                                                                 "keras": _keras_tflite}


def calibrate(session: Session, quantizer: Any, quiet: bool | None) -> list[Any]:
    """Calibrate on the first ``calibration: {batches: N}`` training batches of ``--data`` (when the YAML file asks
    and the quantizer calibrates); returns those batches (none otherwise)."""
    from slimkit.utils.progress import progress

    if "calibration" not in session.settings or not hasattr(quantizer, "calibrate"):
        return []
    count = int(session.settings["calibration"].get("batches", 8))
    batches = [x for (x, _), _ in zip(session.data.train(session.fine_tune["batch_size"]), range(count))]
    quantizer.calibrate(progress(batches, desc="calibrate", quiet=quiet))
    return batches


def _summary(value: Any) -> str:
    import numpy as np

    if value is None:
        return "-"
    array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value).reshape(-1)
    if array.size == 1:
        return f"{array[0]:.6g}"
    return f"{array.size} values, {array.min():.4g}..{array.max():.4g}"


def quantization_table(calibration: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Report rows: bits, scales and zero points per layer (per-channel scales summarised)."""
    header = ["layer", "weight bits", "weight scale", "output bits", "output scale", "output zero point"]
    rows = [[name, str(entry.get("weight_bits", "-")), _summary(entry.get("weight_scale")),
             str(entry.get("output_bits", "-")), _summary(entry.get("output_scale")),
             _summary(entry.get("output_zero_point"))] for name, entry in calibration.items()]
    return header, rows
