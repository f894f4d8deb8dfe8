"""state_dict() / load_state_dict() on every compressor: saved after two training steps, loaded (with
``torch.load(weights_only=True)``) into a compressor rebuilt on a model initialised differently, and two more
steps on both give identical models, outputs and compressor states."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch

from slimkit import CompressionStateError
from slimkit.algorithms.pruning import LevelPruner, LotteryTicketPruner, registry
from slimkit.algorithms.quantization import (
    BNNQuantizer,
    DoReFaQuantizer,
    NaiveQuantizer,
    PostTrainingQuantizer,
    QATQuantizer,
)
from slimkit.models.digits import DigitsCNN
from tests.compression.test_checkpoint_resume import assert_identical

X = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(16) % 10
CONV = ["Conv2d"]


def _pruner_config(name: str) -> dict[str, Any]:
    if name == "agp":
        return {"final_sparsity": 0.6, "end_epoch": 4, "op_types": CONV}
    if name == "lottery":
        return {"sparsity": 0.6, "prune_iterations": 2, "op_types": CONV}
    return {"sparsity": 0.4, "op_types": ["BatchNorm2d"] if name == "slim" else CONV}


def _pruner(name: str) -> Callable[[torch.nn.Module, Any], Any]:
    cls = registry.get_pruner(name)
    kwargs: dict[str, Any] = {"statistics_batch_num": 3} if name in ("apoz", "mean_activation") else {}
    if name in ("agp", "lottery"):
        kwargs["optimizer"] = None
    if name == "agp":
        kwargs["pruning_algorithm"] = "fpgm"
    return lambda model, optimizer: cls(model, [_pruner_config(name)], **{
        **kwargs, **({"optimizer": optimizer} if "optimizer" in kwargs else {})})


QUANT = [{"quant_types": ["input", "weight", "output"], "op_types": ["Conv2d", "Linear"]}]
QUANTIZERS: dict[str, Callable[[torch.nn.Module, Any], Any]] = {
    "naive": lambda model, optimizer: NaiveQuantizer(model, [{"quant_types": ["weight"], "op_types": CONV}]),
    # without dummy_input (no graph capture: fast); BN folding and graph plans resume in test_checkpoint_resume.py
    "qat": lambda model, optimizer: QATQuantizer(model, [{**QUANT[0], "quant_start_step": 3}], optimizer=optimizer),
    "dorefa": lambda model, optimizer: DoReFaQuantizer(model, [{"quant_types": ["weight", "output"], "quant_bits": 3,
                                                                "op_types": CONV}]),
    "bnn": lambda model, optimizer: BNNQuantizer(model, [{"quant_types": ["weight"], "op_types": CONV}]),
    "ptq_l2": lambda model, optimizer: PostTrainingQuantizer(model, QUANT, algorithm="l2", progress=False),
}
COMPRESSORS = {**{name: _pruner(name) for name in registry.PRUNERS}, **QUANTIZERS}


def _drive(compressor: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    if isinstance(compressor, PostTrainingQuantizer):
        compressor.calibrate([X[step::4]])
        return
    if isinstance(compressor, LotteryTicketPruner) and step in (0, 3):
        compressor.prune_iteration_start()
    compressor.update_epoch(step)
    if isinstance(compressor, LevelPruner) and step == 3:
        compressor.update_masks()
    model.train()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(X[step::4]), Y[step::4]).backward()
    optimizer.step()
    compressor.step()


def _build(name: str, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = DigitsCNN(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    compressor = COMPRESSORS[name](model, optimizer)
    return compressor.compress(), optimizer, compressor


def _saved(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_every_compressor_resumes_exactly_from_its_state_dict(name: str) -> None:
    model, optimizer, compressor = _build(name, seed=0)
    for step in range(2):
        _drive(compressor, model, optimizer, step)
    checkpoint = _saved({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "compressor": compressor.state_dict()})
    rebuilt, rebuilt_optimizer, resumed = _build(name, seed=1)  # other initial weights: everything comes from the state
    rebuilt.load_state_dict(checkpoint["model"])
    rebuilt_optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["compressor"])
    assert_identical(compressor.state_dict(), resumed.state_dict())
    for step in range(2, 4):
        _drive(compressor, model, optimizer, step)
        _drive(resumed, rebuilt, rebuilt_optimizer, step)
    assert_identical(model.state_dict(), rebuilt.state_dict())
    assert_identical(compressor.state_dict(), resumed.state_dict())
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(X), rebuilt(X))


def test_a_state_for_another_algorithm_or_other_layers_is_refused_before_anything_changes() -> None:
    model, _, pruner = _build("level", seed=0)
    masks = pruner.get_masks()
    with pytest.raises(CompressionStateError, match="saved by L1FilterPruner on layers"):
        pruner.load_state_dict({**pruner.state_dict(), "algorithm": "L1FilterPruner"})
    state = pruner.state_dict()
    state["masks"]["conv2"]["weight"] = state["masks"]["conv2"]["weight"][:, :1]
    state["masks"]["conv1"]["weight"] = torch.zeros_like(state["masks"]["conv1"]["weight"])
    with pytest.raises(CompressionStateError, match="masks of layer 'conv2' do not fit"):
        pruner.load_state_dict(state)
    assert torch.equal(pruner.get_masks()["conv1"]["weight"], masks["conv1"]["weight"])  # conv1 not installed
    with pytest.raises(CompressionStateError, match="Expected a dict returned by state_dict"):
        pruner.load_state_dict(model.state_dict())


def test_a_state_saved_compressed_compresses_a_fresh_compressor_first() -> None:
    model, _, qat = _build("qat", seed=0)
    model(X)
    fresh = QATQuantizer(DigitsCNN(width=8), [{**QUANT[0], "quant_start_step": 3}])
    fresh.load_state_dict(_saved(qat.state_dict()))
    assert fresh.wrapped and fresh.steps == 0
    assert_identical(qat.state_dict(), fresh.state_dict())
