"""NaN / infinite weights and activations: a NonFiniteError naming the layer (and what reads it), raised where
the value is first seen, with the model as it was (slimkit.compression.finite is the one check)."""

from __future__ import annotations

import pytest
import torch

from slimkit import NonFiniteError
from slimkit.algorithms.pruning import AGPPruner, FPGMPruner, L1FilterPruner, LevelPruner, SlimPruner
from slimkit.algorithms.quantization import (
    BNNQuantizer,
    DoReFaQuantizer,
    NaiveQuantizer,
    PostTrainingQuantizer,
    QATQuantizer,
    WeightOnlyQuantizer,
)
from slimkit.frameworks.torch.wrapper import CompressionWrapper
from slimkit.models.digits import DigitsCNN

X = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _model(value: float, layer: str = "conv2") -> torch.nn.Module:
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    with torch.no_grad():
        model.get_submodule(layer).weight.view(-1)[5] = value
    return model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key].nan_to_num(), value.nan_to_num()), key


PRUNERS = [
    (LevelPruner, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], "conv2"),
    (L1FilterPruner, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], "conv2"),
    (FPGMPruner, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], "conv2"),
    (AGPPruner, [{"initial_sparsity": 0.2, "final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Conv2d"]}], "conv2"),
    (SlimPruner, [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}], "bn1"),
]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize(("cls", "config", "layer"), PRUNERS, ids=[p[0].__name__ for p in PRUNERS])
def test_pruners_refuse_non_finite_weights_and_leave_the_model_unwrapped(cls, config, layer, value) -> None:
    model = _model(value, layer)
    before = _state(model)
    kind = "NaN" if value != value else "infinite"
    with pytest.raises(NonFiniteError, match=rf"weight of layer '{layer}' \({cls.__name__} computes its mask from "
                                             rf"it\)\. Received: {'1 NaN' if kind == 'NaN' else '0 NaN and 1 inf'}"):
        cls(model, config).compress()
    assert not any(isinstance(module, CompressionWrapper) for module in model.modules())
    _assert_same_state(model, before)


def test_a_weight_that_diverges_during_agp_stops_the_next_mask_update() -> None:
    torch.manual_seed(0)
    pruner = AGPPruner(DigitsCNN(width=8), [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Conv2d"]}],
                       pruning_algorithm="l1")
    model = pruner.compress()
    masks = pruner.get_masks()
    with torch.no_grad():
        model.conv3.module.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="layer 'conv3'"):
        pruner.update_epoch(2)
    for name, entry in pruner.get_masks().items():  # no mask changed, not even those of the finite layers
        assert torch.equal(entry["weight"], masks[name]["weight"]), name


@pytest.mark.parametrize("cls", [NaiveQuantizer, QATQuantizer])
def test_quantizers_name_the_layer_whose_weight_is_not_finite(cls) -> None:
    model = _model(float("nan"))
    children = dict(model.named_children())
    quantizer = cls(model, [{"quant_types": ["weight"], "op_types": ["Conv2d"]}])
    with pytest.raises(NonFiniteError, match=rf"the weight of layer 'conv2' \({cls.__name__} quantizes it\)"):
        quantizer.compress()  # before anything is wrapped
    assert dict(model.named_children()) == children and not quantizer.wrapped


@pytest.mark.parametrize("algorithm", ["minmax", "kl", "l2"])
def test_ptq_names_the_layer_and_tensor_whose_activation_is_infinite(algorithm: str) -> None:
    model = _model(float("inf"))  # conv2's output holds inf; its weight is not quantized here
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["input", "output"], "op_types": ["Conv2d"]}],
                                algorithm=algorithm, progress=False)
    before = _state(model)
    with pytest.raises(NonFiniteError, match=r"the output of layer 'conv2' \(PostTrainingQuantizer quantizes it\)"):
        ptq.calibrate([X])
    assert not ptq.wrapped and type(model.conv2) is torch.nn.Conv2d
    _assert_same_state(model, before)
    assert all(not state.observers for state in ptq.states.values())


def test_qat_names_a_non_finite_activation_and_keeps_its_ranges() -> None:
    torch.manual_seed(0)
    qat = QATQuantizer(DigitsCNN(width=8), [{"quant_types": ["output"], "op_types": ["Conv2d"]}])
    model = qat.compress()
    model(X)
    ranges = qat.state_dict()["observers"]["conv1"]["output"]
    with pytest.raises(NonFiniteError, match=r"the output of layer 'conv1' \(QATQuantizer quantizes it\)"):
        model(X * float("nan"))
    after = qat.state_dict()["observers"]["conv1"]["output"]
    assert torch.equal(after["lo"], ranges["lo"]) and torch.equal(after["hi"], ranges["hi"])


@pytest.mark.parametrize("make", [
    lambda m: DoReFaQuantizer(m, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Conv2d"]}]),
    lambda m: BNNQuantizer(m, [{"quant_types": ["weight"], "op_types": ["Conv2d"]}]),
    lambda m: WeightOnlyQuantizer(m, [{"op_types": ["Linear"], "group_size": -1}]),
])
def test_every_quantizer_refuses_a_non_finite_weight_before_wrapping(make):
    model = DigitsCNN()
    name, layer = ("fc", model.fc) if isinstance(make(DigitsCNN()), WeightOnlyQuantizer) else ("conv1", model.conv1)
    with torch.no_grad():
        layer.weight[0].view(-1)[0] = float("nan")
    children = dict(model.named_children())
    with pytest.raises(NonFiniteError, match=rf"the weight of layer '{name}' \(\w+ quantizes it\)"):
        make(model).compress()
    assert dict(model.named_children()) == children  # nothing wrapped
