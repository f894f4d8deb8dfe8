"""One mask validation for load_masks, Pruner.load_masks and ModelSpeedup: keys, types, dtypes, shapes, 0/1 values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit import FileFormatError, MaskError, load_masks
from slimkit.algorithms.pruning import LevelPruner
from slimkit.frameworks.torch.wrapper import CompressionWrapper
from slimkit.masks import check_masks
from slimkit.speedup import ModelSpeedup


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1, bias=False))


def good() -> dict:
    return {"0": {"weight": torch.ones(4, 1, 3, 3), "bias": torch.tensor([1.0, 0.0, 1.0, 1.0])},
            "2": {"weight": torch.ones(2, 4, 1, 1), "bias": None}}


def with_entry(layer: str, **entry) -> dict:
    masks = good()
    masks[layer] = {**masks.get(layer, {}), **entry}
    return masks


# (masks, message after "<source>: ") for masks that are wrong on their own
BAD_ON_THEIR_OWN = {
    "half": (with_entry("0", weight=torch.full((4, 1, 3, 3), 0.5)),
             "the weight mask of layer '0' must hold only 0 and 1. Received: 36 other values, such as [0.5]"),
    "nan": (with_entry("0", bias=torch.tensor([1.0, float("nan"), 0.0, 1.0])),
            "the bias mask of layer '0' must hold only 0 and 1. Received: 1 other values, such as [nan]"),
    "seven": (with_entry("2", weight=torch.full((2, 4, 1, 1), 7, dtype=torch.int64)),
              "the weight mask of layer '2' must hold only 0 and 1. Received: 8 other values, such as [7]"),
    "complex": (with_entry("2", weight=torch.ones(2, 4, 1, 1, dtype=torch.complex64)),
                "the weight mask of layer '2' must have a real dtype (bool, integer or float). "
                "Received: dtype=torch.complex64"),
    "numpy_complex": (with_entry("2", weight=np.ones((2, 4, 1, 1), np.complex128)),
                      "the weight mask of layer '2' must have a real dtype (bool, integer or float). "
                      "Received: dtype=complex128"),
    "string": (with_entry("0", weight="ones"),
               "the weight mask of layer '0' must be a tensor or array of 0s and 1s. Received: str 'ones'"),
    "list": (with_entry("0", bias=[1, 0, 1, 1]),
             "the bias mask of layer '0' must be a tensor or array of 0s and 1s. Received: list [1, 0, 1, 1]"),
    "missing_weight": ({"0": {"bias": torch.ones(4)}},
                       "layer '0': Expected the keys 'weight' and, optionally, 'bias'. Received: keys ['bias']"),
    "typo_key": (with_entry("2", wieght=torch.ones(2, 4, 1, 1)),
                 "layer '2': Expected the keys 'weight' and, optionally, 'bias'. Received: keys ['weight', 'bias', "
                 "'wieght']"),
    "entry_not_mapping": ({"0": torch.ones(4, 1, 3, 3)},
                          "Expected each layer name (a string) to map to {'weight': mask, 'bias': mask or None}. "
                          "Received: '0': Tensor"),
    "not_mapping": ([torch.ones(1)], "Expected masks as {layer_name: {'weight': mask, 'bias': mask or None}}. "
                                     "Received: list"),
}
# masks that are well formed but do not fit model()
BAD_FOR_THE_MODEL = {
    "unknown_layer": (with_entry("conv9", weight=torch.ones(1)),
                      "the masks name layer 'conv9', which is not {layers}. Expected masks computed for this model, "
                      "for layers among ['0', '2']"),
    "relu": (with_entry("1", weight=torch.ones(1)),
             "the masks name layer '1', which is not {layers}. Expected masks computed for this model, "
             "for layers among ['0', '2']"),
    "wrong_shape": (with_entry("0", weight=torch.ones(4, 1, 3)),
                    "the weight mask of layer '0' has the wrong shape. Expected (4, 1, 3, 3). "
                    "Received: shape=(4, 1, 3)"),
    "bias_without_bias": (with_entry("2", bias=torch.ones(2)), "layer '2' has no bias to mask. Received: a bias mask"),
}


@pytest.mark.parametrize("case", sorted(BAD_ON_THEIR_OWN))
def test_check_masks_names_layer_and_key(case):
    masks, message = BAD_ON_THEIR_OWN[case]
    with pytest.raises(MaskError) as error:
        check_masks(masks, source="m.pth")
    assert str(error.value) == f"m.pth: {message}"


@pytest.mark.parametrize("case", sorted(BAD_ON_THEIR_OWN) + sorted(BAD_FOR_THE_MODEL))
def test_speedup_refuses_bad_masks_before_touching_the_model(case):
    masks, message = {**BAD_ON_THEIR_OWN, **BAD_FOR_THE_MODEL}[case]
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(MaskError) as error:
        ModelSpeedup(net, torch.randn(1, 1, 6, 6), masks).speedup_model()
    layers = "a layer with a weight in the model"
    assert str(error.value) == "ModelSpeedup: masks: " + message.replace("{layers}", layers)
    assert net[0].out_channels == 4 and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("case", sorted(BAD_ON_THEIR_OWN) + sorted(BAD_FOR_THE_MODEL))
def test_pruner_load_masks_refuses_bad_masks_before_wrapping(case):
    masks, message = {**BAD_ON_THEIR_OWN, **BAD_FOR_THE_MODEL}[case]
    net = model()
    pruner = LevelPruner(net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    with pytest.raises(MaskError) as error:
        pruner.load_masks(masks)
    layers = "one of the layers LevelPruner compresses"
    assert str(error.value) == "LevelPruner.load_masks: masks: " + message.replace("{layers}", layers)
    assert not pruner.wrapped and not any(isinstance(m, CompressionWrapper) for m in net.modules())


def test_good_masks_load_exactly_everywhere(tmp_path):
    net = model()
    pruner = LevelPruner(net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    masks = good()
    masks["0"]["weight"][1] = 0
    pruner.load_masks(masks)
    got = pruner.get_masks()
    assert torch.equal(got["0"]["weight"], masks["0"]["weight"]) and torch.equal(got["0"]["bias"], masks["0"]["bias"])
    pruner.export_model(tmp_path / "model.pth", mask_path=tmp_path / "mask.pth")
    loaded = load_masks(tmp_path / "mask.pth")
    assert torch.equal(loaded["0"]["weight"], masks["0"]["weight"]) and loaded["2"]["bias"] is None
    fresh = model()
    fresh.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    ModelSpeedup(fresh, torch.randn(1, 1, 6, 6), tmp_path / "mask.pth").speedup_model()
    assert fresh[0].out_channels == 3 and fresh[2].in_channels == 3  # channel 1: weight and bias masked


def test_bool_and_integer_masks_are_accepted():
    masks = {"0": {"weight": torch.ones(4, 1, 3, 3, dtype=torch.bool), "bias": np.array([1, 0, 1, 1], np.uint8)}}
    assert check_masks(masks)["0"]["bias"].tolist() == [1, 0, 1, 1]


def test_load_masks_checks_the_file_content(tmp_path):
    path = tmp_path / "mask.pth"
    torch.save({"fc": {"weight": torch.full((2, 2), 0.5), "bias": None}}, path)
    with pytest.raises(MaskError, match=rf"^{path}: the weight mask of layer 'fc' must hold only 0 and 1"):
        load_masks(path)
    npz = tmp_path / "mask.npz"
    np.savez(npz, **{"dense::kernel": np.ones((2, 2))})
    with pytest.raises(MaskError, match=r"Expected arrays named '<layer>::weight' or '<layer>::bias'. "
                                        r"Received: 'dense::kernel'"):
        load_masks(npz)


def test_a_damaged_mask_file_is_a_file_format_error(tmp_path):
    path = tmp_path / "mask.pth"
    torch.save(good(), path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="Expected a mask file written by export_model"):
        load_masks(cut)
    flipped = bytearray(data)
    start = data.index(b"data/0") + 100  # inside the first tensor's bytes (torch does not check the zip's CRC)
    flipped[start] ^= 0xFF
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(MaskError, match=rf"^{damaged}: the weight mask of layer '0' must hold only 0 and 1"):
        load_masks(damaged)
