"""config_list validation and layer matching: every bad-input class raises ConfigError with a precise message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.algorithms.pruning import LevelPruner


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.features = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.features(self.bn1(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def selected(config_list):
    return [(layer.name, layer.config.sparsity) for layer in LevelPruner(Net(), config_list).layers]


def test_later_dict_wins_and_exclude():
    config_list = [{"sparsity": 0.5, "op_types": ["default"]},
                   {"sparsity": 0.25, "op_names": ["fc"]},
                   {"exclude": True, "op_names": ["conv1"]}]
    assert selected(config_list) == [("features.0", 0.5), ("fc", 0.25)]


def test_op_types_and_op_names_together_must_both_match():
    config_list = [{"sparsity": 0.5, "op_types": ["Conv2d"], "op_names": ["conv1", "fc"]}]
    assert selected(config_list) == [("conv1", 0.5)]


def test_default_op_types_are_weighted_conv_and_linear():
    assert [name for name, _ in selected([{"sparsity": 0.1, "op_types": ["default"]}])] == [
        "conv1", "features.0", "fc"]


def test_nni_style_item_access_on_parsed_config():
    [layer, *_] = LevelPruner(Net(), [{"sparsity": 0.3, "op_types": ["Conv2d"]}]).layers
    assert layer.config["sparsity"] == 0.3 and layer.config.get("missing", 7) == 7


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, "0.5", None, True])
def test_sparsity_out_of_range_or_not_a_number(sparsity):
    with pytest.raises(ConfigError) as error:
        LevelPruner(Net(), [{"sparsity": 0.2, "op_types": ["Linear"]}, {"sparsity": sparsity, "op_types": ["Conv2d"]}])
    message = str(error.value)
    assert "config_list[1]['sparsity']" in message
    assert "Expected a number in [0, 1)" in message
    assert f"Received: sparsity={sparsity!r}" in message


def test_unknown_key_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"config_list\[0\] has unknown key 'sparsty'. Did you mean 'sparsity'\?"):
        LevelPruner(Net(), [{"sparsty": 0.5, "op_types": ["Conv2d"]}])


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"config_list\[0\] is missing required key 'sparsity'"):
        LevelPruner(Net(), [{"op_types": ["Conv2d"]}])


def test_dict_must_name_layers():
    with pytest.raises(ConfigError, match=r"config_list\[0\] names no layers. Expected 'op_types' or 'op_names'"):
        LevelPruner(Net(), [{"sparsity": 0.5}])


def test_op_name_matching_nothing_suggests_closest():
    with pytest.raises(ConfigError, match=r"names a layer the model does not have. Did you mean 'features.0'\? "
                                          r"Received: op_names entry 'feature.0'"):
        LevelPruner(Net(), [{"sparsity": 0.5, "op_names": ["feature.0"]}])


def test_op_type_typo_suggests_framework_spelling():
    with pytest.raises(ConfigError, match=r"unknown layer type 'Conv2D'. Did you mean 'Conv2d'\?"):
        LevelPruner(Net(), [{"sparsity": 0.5, "op_types": ["Conv2D"]}])


def test_dict_matching_no_layer_is_an_error():
    with pytest.raises(ConfigError, match=r"config_list\[1\] matches no layer of the model"):
        LevelPruner(Net(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"sparsity": 0.5, "op_types": ["Conv3d"]}])


def test_config_list_matching_nothing_after_exclusion_is_an_error():
    with pytest.raises(ConfigError, match="the config_list matches no layer to compress"):
        LevelPruner(Net(), [{"sparsity": 0.5, "op_names": ["fc"]}, {"exclude": True, "op_types": ["Linear"]}])


@pytest.mark.parametrize("config_list", [[], {}, "sparsity", [["op_types"]]])
def test_config_list_shape(config_list):
    with pytest.raises(ConfigError, match="Expected config_list to be a non-empty list|must be a dict"):
        LevelPruner(Net(), config_list)


def test_layer_without_weight_is_rejected():
    with pytest.raises(ConfigError, match=r"selects layer 'features.1' of type ReLU, which has no weight to prune"):
        LevelPruner(Net(), [{"sparsity": 0.5, "op_types": ["ReLU"]}])


@pytest.mark.parametrize("value", [[], ["Conv2d", ""], "Conv2d", [3]])
def test_op_types_must_be_a_non_empty_list_of_names(value):
    with pytest.raises(ConfigError, match=r"config_list\[0\]\['op_types'\] is invalid"):
        LevelPruner(Net(), [{"sparsity": 0.5, "op_types": value}])


def test_validation_happens_before_any_layer_is_touched():
    model = Net()
    before = [type(m) for m in model.modules()]
    with pytest.raises(ConfigError):
        LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"sparsity": 2, "op_types": ["Linear"]}])
    assert [type(m) for m in model.modules()] == before


def test_unsupported_model_type():
    from slimkit import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="Expected a torch.nn.Module or a keras.Model"):
        LevelPruner(object(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}])


def test_sparsity_rounds_to_nearest_count():
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1, 101, dtype=torch.float32).view(10, 10))
    pruner = LevelPruner(model, [{"sparsity": 0.29, "op_types": ["Linear"]}])
    pruner.compress()
    mask = pruner.get_masks()["0"]["weight"]
    assert int((mask == 0).sum()) == 29
    assert mask.flatten()[:29].sum() == 0 and mask.flatten()[29:].all()
