import numpy as np
import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import FilterPruner, L1FilterPruner, L2FilterPruner
from tests.algorithms.pruning.pruning_helpers import conv_with_filters, set_weight


def test_l1_prunes_filters_with_smallest_l1_norm_and_their_bias():
    conv = conv_with_filters([0.5, -3.0, 0.1, 2.0, -1.0], in_channels=2, kernel=3, bias=True)
    pruner = L1FilterPruner(nn.Sequential(conv), [{"sparsity": 0.4, "op_types": ["Conv2d"]}])
    pruner.compress()
    masks = pruner.get_masks()["0"]
    keep = [0.0, 1.0, 0.0, 1.0, 1.0]
    assert masks["weight"].shape == conv.weight.shape
    assert masks["weight"].amax(dim=(1, 2, 3)).tolist() == keep
    assert masks["weight"].amin(dim=(1, 2, 3)).tolist() == keep
    assert masks["bias"].tolist() == keep


@pytest.mark.parametrize("pruner_class, expected", [(L1FilterPruner, [0.0, 1.0]), (L2FilterPruner, [1.0, 0.0])])
def test_l1_and_l2_rank_differently(pruner_class, expected):
    # filter 0 = [3, 0]: L1 3, L2 3; filter 1 = [2, 2]: L1 4, L2 2.83
    fc = nn.Linear(2, 2, bias=False)
    set_weight(fc, [[3.0, 0.0], [2.0, 2.0]])
    pruner = pruner_class(nn.Sequential(fc), [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.compress()
    assert pruner.get_masks()["0"]["weight"][:, 0].tolist() == expected


def test_conv_transpose_prunes_axis_one():
    deconv = nn.ConvTranspose2d(2, 3, 1, bias=False)
    set_weight(deconv, torch.tensor([1.0, 5.0, 3.0]).view(1, 3, 1, 1).expand(2, 3, 1, 1))
    pruner = L1FilterPruner(nn.Sequential(deconv), [{"sparsity": 0.34, "op_types": ["ConvTranspose2d"]}])
    pruner.compress()
    assert pruner.get_masks()["0"]["weight"][0, :, 0, 0].tolist() == [0.0, 1.0, 1.0]


class _ChannelsLastLayer:
    """A layer as a Keras adapter presents it: weight (kh, kw, in, out), out_axis -1."""

    def __init__(self, weight):
        self._weight = weight
        self.out_axis = -1
        self.wrapper = None
        self.name = "keras_conv"
        self.weight = weight

    def weight_array(self):
        return self._weight


@pytest.mark.parametrize("name", ["l1", "l2", "fpgm"])
def test_importance_is_layout_independent(name):
    from slimkit.algorithms.pruning import get_pruner

    rng = np.random.default_rng(0)
    torch_weight = rng.normal(size=(6, 3, 3, 3)).astype(np.float32)  # (out, in, kh, kw)
    conv = nn.Conv2d(3, 6, 3, bias=False)
    set_weight(conv, torch_weight)
    pruner = get_pruner(name)(nn.Sequential(conv), [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    keras_layer = _ChannelsLastLayer(torch_weight.transpose(2, 3, 1, 0))
    np.testing.assert_allclose(pruner.channel_importance(keras_layer),
                               pruner.channel_importance(pruner.layers[0]), rtol=1e-5)


def test_filter_pruner_base_needs_channel_importance():
    pruner = FilterPruner(nn.Sequential(nn.Linear(2, 2)), [{"sparsity": 0.5, "op_types": ["Linear"]}])
    with pytest.raises(NotImplementedError, match="channel_importance"):
        pruner.compress()
