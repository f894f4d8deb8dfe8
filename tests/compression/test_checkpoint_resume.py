"""Kill and resume: a run checkpointed (model + compressor + optimizer state dicts), killed with SIGKILL and
resumed in a fresh process ends bit for bit where an uninterrupted run ends (shared/API.md section 7).

Scenarios (tests/compression/resume_worker.py, the digits CNN): AGP with the L1 filter rule (killed mid-epoch,
after the schedule has pruned), Level pruning with masks recomputed every epoch, QAT killed before its
``quant_start_step``, AGP with QAT stacked on it (the schedule still pruning under QAT), and PTQ with KL
calibration killed between calibration batches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import torch

from tests.compression.resume_worker import SCENARIOS

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker(mode: str, directory: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, WORKER, mode, directory], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output


def assert_identical(expected: Any, received: Any, path: str = "") -> None:
    """Equal nested dicts / lists whose tensors are torch.equal (same dtype and shape, every bit)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(received, torch.Tensor) and expected.dtype == received.dtype, path
        assert torch.equal(expected, received), f"{path}: differs by {(expected - received).abs().max()}"
    elif isinstance(expected, dict):
        assert list(expected) == list(received), path
        for key in expected:
            assert_identical(expected[key], received[key], f"{path}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(received), path
        for index, (a, b) in enumerate(zip(expected, received)):
            assert_identical(a, b, f"{path}[{index}]")
    else:
        assert expected == received, f"{path}: {expected!r} != {received!r}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = str(tmp_path_factory.mktemp("resume"))
    full, killed = _worker("full", directory), _worker("killed", directory)
    deadline = time.monotonic() + 300
    while not os.path.exists(os.path.join(directory, "ready")):
        assert killed.poll() is None, killed.communicate()[0]
        assert time.monotonic() < deadline, "the killed run never reached its checkpoints"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    _finish(_worker("resume", directory))
    _finish(full)
    return directory


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_resumed_run_is_bit_exact(runs: str, name: str) -> None:
    load = lambda prefix: torch.load(os.path.join(runs, f"{prefix}_{name}.pth"), weights_only=True)  # noqa: E731
    full, resumed = load("full"), load("resumed")
    assert_identical(full["outputs"], resumed["outputs"], "outputs")
    assert_identical(full["model"], resumed["model"], "model")   # parameters, BN statistics and masks
    assert_identical(full["compressor"], resumed["compressor"], "compressor")  # schedule, steps, observers


def test_the_scenarios_cover_what_a_resume_can_lose(runs: str) -> None:
    load = lambda name: torch.load(os.path.join(runs, f"full_{name}.pth"), weights_only=True)  # noqa: E731
    def pruned_filters(state: dict[str, torch.Tensor], name: str) -> int:
        return int((state[f"{name}.weight_mask"].sum(dim=(1, 2, 3)) == 0).sum())

    agp = load("agp_l1")["model"]
    checkpoint = torch.load(os.path.join(runs, "ckpt_agp_l1.pth"), weights_only=True)
    # killed mid-schedule (epoch 2 of 4: 0.4375 of conv2's 16 filters pruned); the schedule pruned more after it
    assert checkpoint["compressor"]["epoch"] == 2
    assert (pruned_filters(checkpoint["model"], "conv2"), pruned_filters(agp, "conv2")) == (7, 8)
    assert agp["conv3.bias_mask"].tolist() == agp["conv3.weight_mask"].amax(dim=(1, 2, 3)).tolist()
    checkpoint = torch.load(os.path.join(runs, "ckpt_qat.pth"), weights_only=True)
    assert checkpoint["compressor"]["steps"] == 5  # killed before quant_start_step=8: fake quantization began after
    stacked = torch.load(os.path.join(runs, "ckpt_agp_then_qat.pth"), weights_only=True)["compressor"]
    assert (stacked["pruner"]["epoch"], stacked["quantizer"]["steps"]) == (1, 5)  # AGP still pruning under QAT
    final = load("agp_then_qat")
    assert int((final["model"]["fc.weight_mask"] == 0).sum()) == 96  # final_sparsity 0.6 of fc's 160 weights
    assert bool((final["compressor"]["pruner"]["masks"]["fc"]["weight"] == final["model"]["fc.weight_mask"]).all())
    ptq = load("ptq_kl")["compressor"]
    assert ptq["calibrated"] and float(ptq["observers"]["conv1"]["output"]["counts"].sum()) > 0


def test_a_rebuilt_compressed_model_loads_its_checkpoint_and_pruned_filters_stay_pruned() -> None:
    from slimkit.algorithms.pruning import AGPPruner
    from slimkit.models.digits import DigitsCNN

    def pruner_of(model: torch.nn.Module) -> AGPPruner:
        return AGPPruner(model, [{"final_sparsity": 0.5, "end_epoch": 3, "op_types": ["Conv2d"]}],
                         pruning_algorithm="l1")

    torch.manual_seed(0)
    pruner = pruner_of(DigitsCNN(width=8))
    model = pruner.compress()
    pruner.update_epoch(2)
    pruned_before = {}
    with torch.no_grad():  # the raw weights of pruned filters grew (weight decay, a bad step): still pruned
        for name in ("conv1", "conv2", "conv3"):
            pruned = pruner.get_masks()[name]["weight"].sum(dim=(1, 2, 3)) == 0
            model.get_submodule(name).module.weight[pruned] = 100.0
            pruned_before[name] = pruned
    state = model.state_dict()
    rebuilt_pruner = pruner_of(DigitsCNN(width=8))
    rebuilt = rebuilt_pruner.compress()
    assert rebuilt.conv3.bias_mask is None   # what made load_state_dict fail with 'Unexpected key(s) conv3.bias_mask'
    rebuilt.load_state_dict(state)           # the model alone: the filter memory is read from the loaded masks
    pruner.update_epoch(3)
    rebuilt_pruner.update_epoch(3)
    for name, pruned in pruned_before.items():
        mask = rebuilt_pruner.get_masks()[name]
        assert bool(pruned.any()) and bool((mask["weight"].sum(dim=(1, 2, 3))[pruned] == 0).all()), name
        assert torch.equal(mask["weight"], pruner.get_masks()[name]["weight"]), name
    assert torch.equal(rebuilt.conv3.bias_mask, pruner.get_masks()["conv3"]["bias"])
