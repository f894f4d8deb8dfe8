"""Bug-report bundle: everything needed to reproduce a conversion problem."""

from __future__ import annotations

import json
import os

import torch

from slimkit.converter.convert import TFLiteConverter
from slimkit.converter.registry import CONVERTERS
from slimkit.utils import atomic_path


def export_converter_files(model, dummy_input, export_dir, name: str = "model", **options) -> dict[str, str]:
    """Write ``<name>.exported.txt`` (exported program), ``<name>.state_dict.pth``, ``<name>.inputs.pth``,
    ``<name>.ops.json`` (each ATen op, its module path and whether it has a converter) and
    ``<name>.tflite`` (when conversion succeeds) into ``export_dir``; returns {kind: path}.

    Example:

    >>> import tempfile, torch
    >>> files = export_converter_files(torch.nn.Linear(2, 2), torch.randn(1, 2), tempfile.mkdtemp())
    >>> sorted(files)
    ['exported', 'inputs', 'ops', 'state_dict', 'tflite']
    """
    os.makedirs(export_dir, exist_ok=True)
    conv = TFLiteConverter(model, dummy_input, os.path.join(export_dir, f"{name}.tflite"), **options)
    captured = conv.capture()
    files = {}

    def target(kind, suffix):
        files[kind] = os.path.join(export_dir, f"{name}{suffix}")
        return files[kind]

    with atomic_path(target("exported", ".exported.txt")) as tmp, open(tmp, "w") as f:
        f.write(str(captured.program))
    with atomic_path(target("state_dict", ".state_dict.pth")) as tmp:
        torch.save(model.state_dict(), tmp)
    with atomic_path(target("inputs", ".inputs.pth")) as tmp:
        torch.save(list(conv.dummy_input), tmp)
    ops = [{"node": n.name, "op": str(n.target), "module": captured.module_path(n),
            "supported": str(n.target) in CONVERTERS} for n in captured.call_nodes()]
    with atomic_path(target("ops", ".ops.json")) as tmp, open(tmp, "w") as f:
        json.dump(ops, f, indent=1)
    try:
        conv.convert()
        files["tflite"] = conv.tflite_path
    except Exception as error:  # the bundle is still useful without the file
        with atomic_path(target("error", ".error.txt")) as tmp, open(tmp, "w") as f:
            f.write(f"{type(error).__name__}: {error}\n")
    return files
