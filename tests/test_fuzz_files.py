"""Fuzzing the readers of the files users hand to slimkit: YAML configs, mask files, TFLite files.

Each example corrupts a real file (byte flips, a truncation or an insertion, drawn by hypothesis with a fixed
seed) and hands it to the code that reads such files. The outcome must be a :class:`slimkit.SlimkitError` or a
valid result, within 1 s and 200 MB of extra memory; any other exception fails the test.
"""

from __future__ import annotations

import re
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimkit import SlimkitError
from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.analysis.inspect import describe_file
from slimkit.cli import _common as common
from slimkit.cli.prune import KEYS
from slimkit.converter import TFLiteConverter
from slimkit.converter.verify import run_tflite
from slimkit.masks import check_masks
from slimkit.models import DigitsCNN
from slimkit.speedup import ModelSpeedup

EXAMPLES = 150
SECONDS, MEMORY = 1.0, 200 * 2**20
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
FIGURES: dict[str, dict[str, Any]] = {}  # kind -> examples, refused, worst seconds, worst bytes

CONFIG = textwrap.dedent("""\
    algorithm: L1FilterPruner   # a pruner
    arguments: {}
    config_list:
      - sparsity: 0.5
        op_types: &convs [Conv2d]
      - exclude: true
        op_names: [conv1]
        op_types: *convs
    fine_tune: {epochs: 2, lr: 0.001, batch_size: 64, optimizer: adam}
    input_shape: [1, 1, 8, 8]
    seed: 3
    """)


@st.composite
def corrupted(draw: Any, data: bytes) -> bytes:
    """``data`` with 1-4 bytes changed, cut short, or with 1-16 bytes inserted."""
    out = bytearray(data)
    kind = draw(st.sampled_from(["flip", "truncate", "insert"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del out[draw(st.integers(0, len(out) - 1)):]
    else:
        at = draw(st.integers(0, len(out)))
        out[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(rf"{field}:\s+(\d+) kB", handle.read()).group(1)) * 1024


def bounded(kind: str, read: Callable[[], Any]) -> Any:
    """Run ``read``; a SlimkitError counts as a refusal. Assert the time and the growth of the peak memory."""
    try:  # Linux: reset the peak resident size, so that VmHWM is this call's own peak
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before, traced = _status("VmRSS"), False
    except OSError:  # elsewhere: the peak of Python's own allocations
        tracemalloc.start()
        before, traced = 0, True
    start = time.perf_counter()
    result = refused = None
    try:
        result = read()
    except SlimkitError as error:
        refused = error
    seconds = time.perf_counter() - start
    grown = tracemalloc.get_traced_memory()[1] if traced else _status("VmHWM") - before
    if traced:
        tracemalloc.stop()
    figures = FIGURES.setdefault(kind, {"examples": 0, "refused": 0, "seconds": 0.0, "bytes": 0})
    figures["examples"] += 1
    figures["refused"] += refused is not None
    figures["seconds"] = max(figures["seconds"], seconds)
    figures["bytes"] = max(figures["bytes"], grown)
    assert seconds < SECONDS, f"{kind}: {seconds:.2f} s"
    assert grown < MEMORY, f"{kind}: {grown / 2**20:.0f} MB"
    return None if refused is not None else result


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def small_model() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(width=4).eval()


# --------------------------------------------------------------------------- YAML configs

def read_config(path: str, model: torch.nn.Module) -> Any:
    """What ``slimkit prune`` does with its YAML file before it touches the model: read, check, build."""
    doc, settings_ = common.read_settings(path, KEYS)
    cls = common.lookup(common.pruner_registry(), settings_["algorithm"], doc, ("algorithm",), "pruner")
    common.check_keys(doc, settings_.get("fine_tune", {}), common.FINE_TUNE_KEYS, ("fine_tune",))
    return common.construct(cls, model, settings_["config_list"], settings_.get("arguments", {}), doc)


def test_the_base_config_is_valid(folder):
    path = folder / "base.yaml"
    path.write_text(CONFIG)
    assert [layer.name for layer in read_config(str(path), small_model()).layers] == ["conv2", "conv3"]


@FUZZ
@given(data=st.data())
def test_corrupted_yaml_configs(folder, data):
    path = folder / "config.yaml"
    path.write_bytes(data.draw(corrupted(CONFIG.encode())))
    pruner = bounded("yaml", lambda: read_config(str(path), small_model()))
    if pruner is not None:
        assert pruner.layers and not pruner.wrapped


# --------------------------------------------------------------------------- mask files

@pytest.fixture(scope="module")
def mask_file(folder):
    model = small_model()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    pruner.export_model(folder / "model.pth", mask_path=folder / "base_mask.pth")
    return (folder / "base_mask.pth").read_bytes()


def read_masks(path: str) -> Any:
    """Masks as speedup and a pruner read them (both check them against the model)."""
    speedup = ModelSpeedup(small_model(), torch.randn(1, 1, 8, 8), path)
    L1FilterPruner(small_model(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}]).load_masks(path)
    return speedup.masks


@FUZZ
@given(data=st.data())
def test_corrupted_mask_files(folder, mask_file, data):
    path = folder / "mask.pth"
    path.write_bytes(data.draw(corrupted(mask_file)))
    masks = bounded("masks", lambda: read_masks(str(path)))
    if masks is not None:
        shapes = {name: {"weight": tuple(m.weight.shape), "bias": None if m.bias is None else tuple(m.bias.shape)}
                  for name, m in small_model().named_modules() if isinstance(m, torch.nn.Conv2d)}
        assert check_masks(masks, shapes) == masks


# --------------------------------------------------------------------------- TFLite files

@pytest.fixture(scope="module")
def tflite_file(folder):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(32, 3)).eval()
    TFLiteConverter(model, torch.randn(1, 1, 6, 6), folder / "base.tflite").convert()
    return (folder / "base.tflite").read_bytes()


def read_tflite(path: str) -> Any:
    """``slimkit inspect``'s summary and a run in LiteRT."""
    lines = describe_file(path)
    outputs = run_tflite(path, [np.ones((1, 6, 6, 1), np.float32)])
    return lines, outputs


@FUZZ
@given(data=st.data())
def test_corrupted_tflite_files(folder, tflite_file, data):
    path = folder / "model.tflite"
    path.write_bytes(data.draw(corrupted(tflite_file)))
    result = bounded("tflite", lambda: read_tflite(str(path)))
    if result is not None:
        lines, outputs = result
        assert lines[0].startswith("tflite model model.tflite: schema version 3") and len(outputs) >= 1


def test_every_kind_was_fuzzed_and_refused_some_files():
    """The figures of the runs above (pytest runs this file in order): each kind saw its examples and the
    corruptions were not all harmless."""
    assert sorted(FIGURES) == ["masks", "tflite", "yaml"]
    for kind, figures in FIGURES.items():
        assert figures["examples"] >= EXAMPLES and 0 < figures["refused"] <= figures["examples"], (kind, figures)
        print(f"fuzz {kind}: {figures['examples']} examples, {figures['refused']} refused, worst "
              f"{figures['seconds'] * 1e3:.0f} ms, worst peak growth {figures['bytes'] / 2**20:.1f} MB")
