"""TFLite files are checked whole before any reader touches them; corrupt ones raise FileFormatError with the path."""

from __future__ import annotations

import inspect
import re
import struct

import numpy as np
import pytest
import tflite
import torch

from slimkit import FileFormatError
from slimkit.analysis.inspect import describe_file
from slimkit.converter import TFLiteConverter
from slimkit.converter.verify import run_tflite
from slimkit.utils import tflite_file
from slimkit.utils.flatbuffer_check import Table
from slimkit.utils.tflite_file import check_tflite, load_tflite, tflite_interpreter

SCHEMA = [value for value in vars(tflite_file).values() if isinstance(value, Table)]


@pytest.fixture(scope="module")
def small_tflite(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(32, 3)).eval()
    path = tmp_path_factory.mktemp("tflite") / "small.tflite"
    TFLiteConverter(model, torch.randn(1, 1, 6, 6), path).convert()
    return path


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


@pytest.mark.parametrize("table", SCHEMA, ids=lambda t: t.name)
def test_schema_slots_match_the_tflite_package(table):
    """Every field the ``tflite`` package reads is in the schema, at the same vtable slot."""
    cls = getattr(tflite, table.name)
    package = {}  # vtable offset -> accessor names
    for name, method in vars(cls).items():
        found = re.search(r"self\._tab\.Offset\((\d+)\)", inspect.getsource(method)) if callable(method) else None
        if found:
            package.setdefault(int(found.group(1)), set()).add(name)
    ours = {4 + 2 * slot: _camel(name) for slot, name, _ in table.fields}
    deprecated = set(package) - set(ours)
    assert all(all("Deprecated" in n for n in package[offset]) for offset in deprecated), deprecated
    for offset, name in ours.items():
        if offset in package:
            assert name in package[offset], (table.name, name, package[offset])


def test_a_converted_file_passes(small_tflite):
    model = load_tflite(small_tflite)
    assert model.SubgraphsLength() == 1 and model.Subgraphs(0).OperatorsLength() == 3


def test_every_truncation_is_refused(small_tflite):
    data = small_tflite.read_bytes()
    for size in range(len(data)):
        with pytest.raises(FileFormatError, match=r"^not a valid TFLite file: cut \("):
            check_tflite(data[:size], "cut")


def test_inspect_names_the_truncated_file(small_tflite, tmp_path):
    path = tmp_path / "cut.tflite"
    data = small_tflite.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(FileFormatError) as error:
        describe_file(path)
    assert str(error.value).startswith(f"not a valid TFLite file: {path} (Model.buffers[")
    assert "runs past the end" in str(error.value)


def _patched(data: bytes, table, voffset: int, value: int, fmt: str = "<I") -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, table._tab.Pos + table._tab.Offset(voffset), value)
    return bytes(out)


def test_indices_out_of_range_are_refused(small_tflite):
    data = small_tflite.read_bytes()
    model = tflite.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    op = graph.Operators(1)  # RESHAPE: opcode_index 1 is stored
    with pytest.raises(FileFormatError, match=r"subgraphs\[0\]\.operators\[1\]\.opcode_index 7 is out of range "
                                              r"\(3 available\)"):
        check_tflite(_patched(data, op, 4, 7), "f")
    with pytest.raises(FileFormatError, match=r"subgraphs\[0\]\.tensors\[1\]\.buffer 1000 is out of range"):
        check_tflite(_patched(data, graph.Tensors(1), 8, 1000), "f")
    inputs = bytearray(data)
    struct.pack_into("<i", inputs, graph._tab.Vector(graph._tab.Offset(6)), 9)
    with pytest.raises(FileFormatError, match=r"subgraphs\[0\]\.inputs: tensor 9 is out of range \(9 available\)"):
        check_tflite(bytes(inputs), "f")


def test_litert_refusals_name_the_file(small_tflite, tmp_path):
    data = small_tflite.read_bytes()
    path = tmp_path / "v99.tflite"
    path.write_bytes(_patched(data, tflite.Model.GetRootAs(data, 0), 4, 99))
    with pytest.raises(FileFormatError, match=re.escape(f"not a valid TFLite file: {path} (LiteRT: Model provided "
                                                        "is schema version 99 not equal to supported version 3.)")):
        run_tflite(path, [np.zeros((1, 6, 6, 1), np.float32)])
    with pytest.raises(FileFormatError, match=r"Expected a readable \.tflite file\. Received: path=.*missing"):
        run_tflite(tmp_path / "missing.tflite", [])
    assert tflite_interpreter(data).get_input_details()[0]["shape"].tolist() == [1, 6, 6, 1]


def test_inspect_and_run_agree_with_the_file(small_tflite):
    lines = describe_file(small_tflite)
    assert lines[:2] == ["tflite model small.tflite: schema version 3, 1 subgraph",
                         "subgraph 0 'main': inputs [0], outputs [8]"]
    x = np.random.default_rng(0).standard_normal((1, 6, 6, 1)).astype(np.float32)
    assert run_tflite(small_tflite, [x])[0].shape == (1, 3)


def test_a_tensor_declared_larger_than_its_op_computes_is_refused_before_xnnpack_allocates(small_tflite):
    data = bytearray(small_tflite.read_bytes())
    graph = tflite.Model.GetRootAs(bytes(data), 0).Subgraphs(0)
    conv_out = graph.Tensors(3)
    struct.pack_into("<i", data, conv_out._tab.Vector(conv_out._tab.Offset(4)) + 8, 10_000_000)  # dim 2
    with pytest.raises(FileFormatError, match=re.escape("(tensor 3 'conv2d' is declared with shape "
                                                        "[1, 4, 10000000, 2], but its op computes [1, 4, 4, 2])")):
        tflite_interpreter(bytes(data))


def test_names_must_be_utf8(small_tflite):
    data = bytearray(small_tflite.read_bytes())
    name = tflite.Model.GetRootAs(bytes(data), 0).Subgraphs(0).Tensors(0)
    position = name._tab.Pos + name._tab.Offset(10)
    start = position + struct.unpack_from("<I", data, position)[0]
    data[start + 4] = 0xFF
    with pytest.raises(FileFormatError, match=r"Model\.subgraphs\[0\]\.tensors\[0\]\.name: string at byte \d+ is "
                                              r"not UTF-8 \(invalid start byte at byte \d+\)"):
        check_tflite(bytes(data), "f")
