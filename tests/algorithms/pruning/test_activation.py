import numpy as np
import pytest
import torch
from torch import nn

from slimkit import CompressionStateError, ConfigError
from slimkit.algorithms.pruning import ActivationAPoZRankFilterPruner, ActivationMeanRankFilterPruner
from tests.algorithms.pruning.pruning_helpers import set_weight


def _probe_model():
    """1x1 conv on a constant-positive input: channel outputs are w_c * x + b_c."""
    conv = nn.Conv2d(1, 4, 1)
    # after ReLU: ch0 dead (always < 0), ch1 positive on 1/4 of pixels, ch2 always 2x, ch3 always x + 0.5
    set_weight(conv, [-1.0, 1.0, 2.0, 1.0], bias=[-0.1, -0.75, 0.0, 0.5])
    return nn.Sequential(conv)


def _inputs():
    return torch.linspace(0.0, 1.0, 16).view(1, 1, 4, 4) + 0.01


def test_apoz_prunes_the_channels_with_most_zeros():
    model = _probe_model()
    pruner = ActivationAPoZRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    assert pruner.get_masks()["0"]["weight"].flatten().tolist() == [1.0] * 4  # nothing before statistics
    model(_inputs())
    masks = pruner.get_masks()["0"]
    assert masks["weight"].flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    assert masks["bias"].tolist() == [0.0, 0.0, 1.0, 1.0]
    stats = pruner.statistics["0"]
    np.testing.assert_allclose(1 - stats.zeros / stats.count, [0.0, 4 / 16, 1.0, 1.0])
    assert not pruner._handles  # hooks removed once the masks are computed


def test_mean_activation_prunes_the_lowest_means():
    model = _probe_model()
    pruner = ActivationMeanRankFilterPruner(model, [{"sparsity": 0.25, "op_types": ["Conv2d"]}])
    pruner.compress()
    model(_inputs())
    # means after ReLU: ch0 0, ch1 small, ch2 = 2 * mean(x) ~ 1.02, ch3 = mean(x) + 0.5 ~ 1.01
    assert pruner.get_masks()["0"]["weight"].flatten().tolist() == [0.0, 1.0, 1.0, 1.0]
    pruner2 = ActivationMeanRankFilterPruner(_probe_model(), [{"sparsity": 0.75, "op_types": ["Conv2d"]}])
    model2 = pruner2.compress()
    model2(_inputs())
    assert pruner2.get_masks()["0"]["weight"].flatten().tolist() == [0.0, 0.0, 1.0, 0.0]


def test_statistics_span_statistics_batch_num_passes_and_relu6():
    model = _probe_model()
    pruner = ActivationMeanRankFilterPruner(model, [{"sparsity": 0.25, "op_types": ["Conv2d"]}],
                                            statistics_batch_num=2, activation="relu6")
    pruner.compress()
    model(_inputs() * 10)  # ch2 = 20x clipped to 6; ch3 = 10x + 0.5 mostly > 6 too
    assert pruner.get_masks()["0"]["weight"].flatten().tolist() == [1.0] * 4
    model(_inputs() * 10)
    stats = pruner.statistics["0"]
    assert stats.batches == 2 and stats.count == 32
    x = (_inputs() * 10).flatten().numpy()
    expected = np.array([0.0, np.clip(x - 0.75, 0, 6).mean(), np.clip(2 * x, 0, 6).mean(),
                         np.clip(x + 0.5, 0, 6).mean()])
    np.testing.assert_allclose(stats.sums / stats.count, expected, rtol=1e-5)
    assert pruner.get_masks()["0"]["weight"].flatten().tolist() == [0.0, 1.0, 1.0, 1.0]
    model(_inputs() * -10)  # later passes change nothing
    assert pruner.statistics["0"].batches == 2


def test_trainer_runs_the_statistics_passes():
    calls = []

    def trainer(model, optimizer, criterion, epoch):
        calls.append((optimizer, criterion, epoch))
        model(_inputs())

    pruner = ActivationAPoZRankFilterPruner(_probe_model(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
                                            trainer=trainer, criterion="loss", optimizer="opt")
    pruner.compress()
    assert calls == [("opt", "loss", 0)]
    assert pruner.get_masks()["0"]["weight"].flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_step_is_harmless_and_masks_need_passes():
    pruner = ActivationAPoZRankFilterPruner(_probe_model(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    pruner.step()
    assert not pruner.masks_ready
    with pytest.raises(CompressionStateError, match="no activations"):
        pruner.update_masks()


@pytest.mark.parametrize("kwargs", [{"activation": "gelu"}, {"statistics_batch_num": 0}])
def test_bad_options_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        ActivationMeanRankFilterPruner(_probe_model(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}], **kwargs)
