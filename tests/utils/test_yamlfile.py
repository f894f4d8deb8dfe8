"""load_yaml refuses hostile YAML quickly and in little memory: alias bombs, deep nesting, recursion, bad bytes."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from slimkit import ConfigError
from slimkit.cli import main
from slimkit.utils.yamlfile import MAX_DEPTH, load_yaml


def laughs(levels: int = 9) -> str:
    """The billion laughs: each line's list repeats the previous line's nine times (9**9 strings in all)."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def merges(levels: int = 12) -> str:
    """Merge keys (<<) multiply the same way: each mapping merges the previous one eight times."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} {{x: 1, y: 2}}"]
    lines += [f"{n}: &{n} {{<<: [" + ", ".join([f"*{p}"] * 8) + "]}" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


CASES = {
    "laughs": (laughs(), "6: this value expands to more than 250,000 values through aliases"),
    "merges": (merges(), "7: this value expands to more than 250,000 values through aliases"),
    "deep_flow": ("[" * 10_000 + "]" * 10_000, f"1: invalid YAML: nested deeper than {MAX_DEPTH} levels"),
    "deep_block": ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 200)),
                   f"64: invalid YAML: nested deeper than {MAX_DEPTH} levels"),
    "recursive": ("x: 1\na: &a [1, *a]\n", "2: an alias refers to the value it is inside of"),
    "deep_aliases": ("".join(f"a{i}: &a{i} [*a{i - 1}]\n" if i else "a0: &a0 [1]\n" for i in range(70)),
                     "64: through aliases, this value nests deeper than 64 levels"),
    "bad_date": ("x: 1\ny: 2001-13-45\n", "2: invalid YAML: month must be in 1..12 ('2001-13-45')"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_yaml_is_refused_fast_in_little_memory(tmp_path, name):
    text, message = CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as error:
            load_yaml(path)
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert str(error.value).startswith(f"{path}:{message}")
    assert seconds < 1.0 and peak < 20 * 2**20, (seconds, peak)


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"algorithm: LevelPruner\nname: caf\xe9\n")
    with pytest.raises(ConfigError, match=r":2: the file is not UTF-8 text \(byte 32 is 0xe9\)"):
        load_yaml(path)


def test_a_file_too_large_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr("slimkit.utils.yamlfile.MAX_BYTES", 100)
    path = tmp_path / "big.yaml"
    path.write_text("a: 1\n" * 30)
    with pytest.raises(ConfigError, match="the file is larger than"):
        load_yaml(path)


def test_ordinary_aliases_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("convs: &convs [Conv2d, Linear]\nconfig_list:\n  - op_types: *convs\n    sparsity: 0.5\n"
                    "  - {<<: {sparsity: 0.25}, op_names: [fc]}\n")
    doc = load_yaml(path)
    assert doc.data == {"convs": ["Conv2d", "Linear"],
                        "config_list": [{"op_types": ["Conv2d", "Linear"], "sparsity": 0.5},
                                        {"sparsity": 0.25, "op_names": ["fc"]}]}
    assert doc.line(("config_list", 1)) == 5


def test_the_cli_reports_an_alias_bomb_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "prune.yaml"
    path.write_text("algorithm: LevelPruner\n" + laughs() + "config_list: [{sparsity: 0.5, op_types: [Linear]}]\n")
    status = main(["prune", "--config", str(path), "--model", "tests.cli.factories:digits_model",
                   "--out", str(tmp_path / "out")])
    assert status == 2
    assert capsys.readouterr().err.startswith(f"slimkit prune: error: {path}:7: this value expands to more than")
    assert not (tmp_path / "out").exists()
