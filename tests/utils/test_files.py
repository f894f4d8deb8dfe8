"""atomic_path: whole destinations, no debris from writers killed by SIGKILL, the umask's file mode."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from slimkit.utils.files import LOCK_PREFIX, atomic_path, remove_dead_temps, temp_name_pattern, write_all

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Writes part of the new content into the temporary file, says so, then waits: for SIGKILL or a line on stdin.
WRITER = textwrap.dedent("""
    import sys
    from slimkit.utils.files import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"half of the new")
            handle.flush()
            print(tmp, flush=True)
            sys.stdin.readline()
            handle.write(b" content")
""")


def start_writer(dest) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(dest)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    tmp = child.stdout.readline().strip()
    assert os.path.exists(tmp), "the writer did not report its temporary file"
    return child, tmp


def temps(dest, prefix: str = ".slimkit-") -> list[str]:
    pattern = temp_name_pattern(os.path.basename(dest), prefix)
    return sorted(name for name in os.listdir(os.path.dirname(dest)) if pattern.fullmatch(name))


def write(dest, data: bytes) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def test_writers_killed_mid_write_leave_the_old_file_and_the_next_write_removes_their_temps(tmp_path):
    dest = tmp_path / "model.pth"
    write(dest, b"old content")
    writers = [start_writer(dest) for _ in range(4)]
    for child, _ in writers:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert len(temps(dest)) == len(temps(dest, LOCK_PREFIX)) == 4  # killed mid-write: four dead writers' files
    assert dest.read_bytes() == b"old content"
    write(dest, b"new content")
    assert dest.read_bytes() == b"new content"
    assert sorted(os.listdir(tmp_path)) == ["model.pth"]


def test_a_live_writer_in_another_process_is_not_disturbed(tmp_path):
    dest = tmp_path / "mask.pth"
    child, tmp = start_writer(dest)
    write(dest, b"from the parent")  # cleans up dead writers only
    assert os.path.exists(tmp)
    assert dest.read_bytes() == b"from the parent"
    child.communicate("go\n", timeout=10)
    assert child.returncode == 0
    assert dest.read_bytes() == b"half of the new content"  # the last rename wins, whole
    assert sorted(os.listdir(tmp_path)) == ["mask.pth"]


def test_a_live_writer_in_another_thread_is_not_disturbed(tmp_path):
    dest = tmp_path / "m.tflite"
    inside, resume = threading.Event(), threading.Event()

    def slow_writer():
        with atomic_path(dest) as tmp, open(tmp, "wb") as handle:
            handle.write(b"thread")
            inside.set()
            resume.wait(10)

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert inside.wait(10)
    write(dest, b"main")
    assert remove_dead_temps(dest) == [] and len(temps(dest)) == 1
    resume.set()
    thread.join(10)
    assert dest.read_bytes() == b"thread"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_a_temporary_file_without_its_lock_file_is_removed_and_other_destinations_are_left_alone(tmp_path):
    orphan = tmp_path / ".slimkit-00000000000000aa.model.pth"
    other = tmp_path / ".slimkit-00000000000000bb.model.pt"
    orphan.write_bytes(b"x")
    other.write_bytes(b"y")
    write(tmp_path / "model.pth", b"new")
    assert sorted(os.listdir(tmp_path)) == [other.name, "model.pth"]


def test_a_failed_block_removes_its_temp_and_keeps_the_destination(tmp_path):
    dest = tmp_path / "out.txt"
    write(dest, b"kept")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(dest) as tmp, open(tmp, "wb") as handle:
        handle.write(b"partial")
        raise RuntimeError("boom")
    assert dest.read_bytes() == b"kept" and os.listdir(tmp_path) == ["out.txt"]


def test_temporary_names_end_with_the_destination_name_and_belong_to_it_only(tmp_path):
    with atomic_path(tmp_path / "net.weights.h5") as tmp:
        name = os.path.basename(tmp)
        assert name.startswith(".slimkit-") and name.endswith(".net.weights.h5")
        assert temp_name_pattern("net.weights.h5").fullmatch(name)
        assert not temp_name_pattern("weights.h5").fullmatch(name)
        open(tmp, "wb").close()


def test_atomic_path_of_an_enclosing_blocks_temporary_path_writes_it_in_place(tmp_path):
    with atomic_path(tmp_path / "model.pth") as outer:
        with atomic_path(outer) as inner, open(inner, "wb") as handle:
            handle.write(b"nested")
        assert inner == outer  # one temporary file and one lock file, no nested ones
        assert temps(tmp_path / "model.pth") == [os.path.basename(outer)] and len(os.listdir(tmp_path)) == 2
        assert len(temps(tmp_path / "model.pth", LOCK_PREFIX)) == 1
    assert (tmp_path / "model.pth").read_bytes() == b"nested"
    assert os.listdir(tmp_path) == ["model.pth"]


def test_write_all_renames_only_when_every_write_succeeded(tmp_path):
    (tmp_path / "b.weights.h5").write_bytes(b"old b")
    seen = []

    def write(data: bytes):
        def to(tmp: str) -> None:
            seen.append(os.path.basename(tmp))
            with atomic_path(tmp) as same, open(same, "wb") as handle:  # as a writer that stages on its own
                handle.write(data)
        return to

    def fail(tmp: str) -> None:
        raise RuntimeError("third file failed")

    with pytest.raises(RuntimeError, match="third file failed"):
        write_all([(tmp_path / "a.pth", write(b"a")), (None, fail), (tmp_path / "b.weights.h5", write(b"b")),
                   (tmp_path / "c.onnx", fail)])
    assert sorted(os.listdir(tmp_path)) == ["b.weights.h5"] and (tmp_path / "b.weights.h5").read_bytes() == b"old b"
    assert [name.split(".", 2)[2] for name in seen] == ["a.pth", "b.weights.h5"]  # suffix-checking writers accept
    write_all([(tmp_path / "a.pth", write(b"a")), (tmp_path / "b.weights.h5", write(b"b"))])
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "b.weights.h5"]
    assert (tmp_path / "a.pth").read_bytes() == b"a" and (tmp_path / "b.weights.h5").read_bytes() == b"b"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_open_would_give_them(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write(tmp_path / "a.bin", b"x")
        with open(tmp_path / "reference.bin", "wb"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "reference.bin").st_mode) == mode


EXPORTER = textwrap.dedent("""
    import os, sys, torch
    from slimkit.algorithms.pruning import LevelPruner
    pruner = LevelPruner(torch.nn.Sequential(torch.nn.Linear(1024, 1024)), [{'sparsity': 0.5, 'op_types': ['Linear']}])
    pruner.compress()
    print('ready', flush=True)
    while True:
        pruner.export_model(model_path=os.path.join(sys.argv[1], 'model.pth'),
                            mask_path=os.path.join(sys.argv[1], 'mask.pth'))
""")


def kill_exporter_mid_write(out) -> list[str]:
    """Start export_model in a loop in another process and SIGKILL it while one of its files is being written."""
    child = subprocess.Popen([sys.executable, "-c", EXPORTER, str(out)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert child.stdout.readline().strip() == "ready"
        while not any(name.startswith(".slimkit-") for name in os.listdir(out)):
            assert child.poll() is None, "the exporter died on its own"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    return [name for name in os.listdir(out) if name.startswith(".slimkit-")]


def test_export_model_killed_mid_write_leaves_whole_files_and_the_next_export_cleans_up(tmp_path):
    import torch

    from slimkit import load_masks
    from slimkit.algorithms.pruning import LevelPruner

    debris = []
    for _ in range(3):  # the writer may finish its file between being seen and being killed: try again
        debris = kill_exporter_mid_write(tmp_path)
        if debris:
            break
    assert debris, "no kill landed while a file was being written"
    for name, load in (("model.pth", lambda p: torch.load(p, weights_only=True)), ("mask.pth", load_masks)):
        if (tmp_path / name).exists():  # written whole by an earlier round of the loop
            assert len(load(tmp_path / name)) >= 1
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.compress()
    pruner.export_model(model_path=tmp_path / "model.pth", mask_path=tmp_path / "mask.pth")
    assert sorted(os.listdir(tmp_path)) == ["mask.pth", "model.pth"]
    assert torch.load(tmp_path / "model.pth", weights_only=True)["0.weight"].shape == (4, 4)
