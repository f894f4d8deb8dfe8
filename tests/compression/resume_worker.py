"""Worker of tests/compression/test_checkpoint_resume.py, run in its own process.

``python resume_worker.py full DIR``: every scenario trained without a break; results in ``DIR/full_<name>.pth``.
``python resume_worker.py killed DIR``: every scenario trained to its checkpoint step, checkpoint written to
``DIR/ckpt_<name>.pth``; then ``DIR/ready`` appears and training goes on until the test kills the process.
``python resume_worker.py resume DIR``: every scenario rebuilt from scratch, checkpoint loaded, training finished;
results in ``DIR/resumed_<name>.pth``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from slimkit.algorithms.pruning import AGPPruner, LevelPruner
from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.models.digits import DigitsCNN, load_digits_tensors
from slimkit.utils import atomic_path

BATCH = 32
PER_EPOCH = 3


class Stacked:
    """AGP pruning with QAT stacked on the same layers (shared/API.md section 7), driven and checkpointed as one."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor):
        self.pruner = AGPPruner(model, [{"final_sparsity": 0.6, "end_epoch": 3, "op_types": ["Conv2d", "Linear"]}],
                                optimizer=opt)
        self.make_quantizer = lambda: QATQuantizer(
            model, [{"quant_types": ["input", "weight", "output"], "op_types": ["default"], "quant_start_step": 2}],
            optimizer=opt, dummy_input=x[:1])
        self.quantizer: Any = None

    def compress(self) -> torch.nn.Module:
        self.pruner.compress()
        self.quantizer = self.make_quantizer()
        return self.quantizer.compress()

    def update_epoch(self, epoch: int) -> None:
        self.pruner.update_epoch(epoch)   # the pruning schedule goes on under QAT

    def step(self) -> None:
        self.pruner.step()
        self.quantizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict(), "quantizer": self.quantizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state["pruner"])
        self.quantizer.load_state_dict(state["quantizer"])


@dataclass
class Scenario:
    build: Callable[[torch.nn.Module, torch.optim.Optimizer, torch.Tensor], Any]
    steps: int        # training steps (PTQ: calibration batches)
    checkpoint: int   # steps done when the checkpoint is written
    trains: bool = True


SCENARIOS = {
    "agp_l1": Scenario(lambda model, opt, x: AGPPruner(
        model, [{"final_sparsity": 0.5, "end_epoch": 4, "op_types": ["Conv2d", "Linear"]}], optimizer=opt,
        pruning_algorithm="l1"), steps=15, checkpoint=7),
    "level": Scenario(lambda model, opt, x: LevelPruner(
        model, [{"sparsity": 0.6, "op_types": ["Conv2d", "Linear"]}]), steps=9, checkpoint=4),
    "qat": Scenario(lambda model, opt, x: QATQuantizer(
        model, [{"quant_types": ["input", "weight", "output"], "op_types": ["Conv2d", "Linear"],
                 "quant_start_step": 8}], optimizer=opt, dummy_input=x[:1]), steps=12, checkpoint=5),
    "agp_then_qat": Scenario(Stacked, steps=12, checkpoint=5),
    "ptq_kl": Scenario(lambda model, opt, x: PostTrainingQuantizer(
        model, [{"quant_types": ["input", "weight", "output"], "op_types": ["Conv2d", "Linear"]}], algorithm="kl",
        dummy_input=x[:1], progress=False), steps=6, checkpoint=3, trains=False),
}


def data() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    x, y, x_test, _ = load_digits_tensors()
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, BATCH * PER_EPOCH * 4, BATCH)]
    return batches, x_test[:64]


def build(name: str, x: torch.Tensor) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    compressor = SCENARIOS[name].build(model, optimizer, x)
    return compressor.compress(), optimizer, compressor


def run(name: str, model: torch.nn.Module, optimizer: Any, compressor: Any, batches: list, start: int,
        stop: int) -> None:
    """Steps ``start .. stop - 1``: train (an epoch is PER_EPOCH steps) or calibrate on one batch each."""
    scenario = SCENARIOS[name]
    for step in range(start, stop):
        inputs, targets = batches[step % len(batches)]
        if not scenario.trains:
            compressor.calibrate([inputs])
            continue
        epoch, index = divmod(step, PER_EPOCH)
        if index == 0:
            compressor.update_epoch(epoch)
            if isinstance(compressor, LevelPruner):
                compressor.update_masks()  # masks recomputed from the trained weights, never growing back
        model.train()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        compressor.step()


def results(model: torch.nn.Module, compressor: Any, x_test: torch.Tensor) -> dict[str, Any]:
    model.eval()
    with torch.no_grad():
        outputs = model(x_test)
    return {"model": model.state_dict(), "compressor": compressor.state_dict(), "outputs": outputs}


def save(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def main(mode: str, directory: str) -> None:
    torch.set_num_threads(1)
    batches, x_test = data()
    for name, scenario in SCENARIOS.items():
        model, optimizer, compressor = build(name, batches[0][0])
        if mode == "full":
            run(name, model, optimizer, compressor, batches, 0, scenario.steps)
            save(results(model, compressor, x_test), os.path.join(directory, f"full_{name}.pth"))
        elif mode == "killed":
            run(name, model, optimizer, compressor, batches, 0, scenario.checkpoint)
            save({"model": model.state_dict(), "compressor": compressor.state_dict(),
                  "optimizer": optimizer.state_dict()}, os.path.join(directory, f"ckpt_{name}.pth"))
        else:
            checkpoint = torch.load(os.path.join(directory, f"ckpt_{name}.pth"), weights_only=True)
            model.load_state_dict(checkpoint["model"])
            compressor.load_state_dict(checkpoint["compressor"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            run(name, model, optimizer, compressor, batches, scenario.checkpoint, scenario.steps)
            save(results(model, compressor, x_test), os.path.join(directory, f"resumed_{name}.pth"))
    if mode == "killed":  # mid-training when the test kills the process
        open(os.path.join(directory, "ready"), "w").close()
        while True:
            run(name, model, optimizer, compressor, batches, scenario.checkpoint, scenario.steps)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
