"""A filter mask describes the whole channel: dependency-aware filter pruners mask the BatchNorm layers that follow
the pruned output channels (weight and bias), so the masked model is exactly what speedup builds and the channels
go in full (without it a pruned channel leaves its BatchNorm as ``beta - gamma * mean / sqrt(var + eps)``, a
constant a padded conv cannot absorb)."""

from __future__ import annotations

import numpy as np
import torch

from slimkit import load_masks
from slimkit.algorithms.pruning import ActivationMeanRankFilterPruner, AGPPruner, L1FilterPruner
from slimkit.models.zoo import build
from slimkit.speedup import ModelSpeedup

CONFIG = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]


def kept(mask: torch.Tensor) -> list[int]:
    """Output channels a mask keeps (any nonzero entry)."""
    return torch.nonzero(mask.reshape(mask.shape[0], -1).sum(1)).flatten().tolist()


def pruned_resnet() -> tuple[torch.nn.Module, torch.Tensor, L1FilterPruner]:
    model, x = build("resnet_basic")
    pruner = L1FilterPruner(model, CONFIG, dependency_aware=True, dummy_input=x)
    pruner.compress()
    return model, x, pruner


def test_batchnorms_are_masked_with_the_filters_they_follow():
    model, x, pruner = pruned_resnet()
    masks = pruner.get_masks()
    assert [layer.name for layer in pruner.followers] == [
        "stem.1", "body.0.bn1", "body.0.bn2", "body.1.bn1", "body.1.bn2", "body.1.down.1", "body.2.bn1",
        "body.2.bn2"]
    assert [layer.name for layer in pruner.ranked_layers] == [
        name for name, module in build("resnet_basic")[0].named_modules() if isinstance(module, torch.nn.Conv2d)]
    follows = {"stem.1": "stem.0", "body.0.bn1": "body.0.conv1", "body.0.bn2": "body.0.conv2",
               "body.1.bn1": "body.1.conv1", "body.1.bn2": "body.1.conv2", "body.1.down.1": "body.1.down.0",
               "body.2.bn1": "body.2.conv1", "body.2.bn2": "body.2.conv2"}
    for bn, conv in follows.items():
        assert torch.equal(masks[bn]["weight"], masks[bn]["bias"]), bn
        assert kept(masks[bn]["weight"]) == kept(masks[conv]["weight"]), bn
        assert len(kept(masks[bn]["weight"])) == masks[bn]["weight"].numel() // 2, bn
    # in the masked model the pruned channels are exactly zero after their BatchNorm
    outputs = {}
    handle = model.stem[1].register_forward_hook(lambda module, args, out: outputs.setdefault("stem", out))
    with torch.no_grad():
        model(x)
    handle.remove()
    dropped = [c for c in range(8) if c not in kept(masks["stem.1"]["weight"])]
    assert torch.count_nonzero(outputs["stem"][:, dropped]) == 0


def test_speedup_removes_the_channels_in_full():
    model, x, pruner = pruned_resnet()
    masks = pruner.get_masks()
    with torch.no_grad():
        masked = model(x)
    pruner.unwrap_model()
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    # half the channels of every conv and BatchNorm; only the input channels and the classifier's outputs stay
    assert (report.params_before, report.params_after) == (9938, 2638)
    assert [model.stem[0].out_channels, model.stem[1].num_features, model.body[2].conv2.out_channels] == [4, 4, 8]
    with torch.no_grad():
        assert torch.allclose(model(x), masked, rtol=1e-5, atol=1e-6)


def test_a_concatenated_channel_follows_its_own_producer():
    """DenseNet: ``body.1.bn`` normalises the stem's 8 channels and ``body.0.conv``'s 6, concatenated. With
    ``body.0.conv`` excluded, only the stem's pruned channels are masked there."""
    model, x = build("densenet_concat")
    config = CONFIG + [{"exclude": True, "op_names": ["body.0.conv"]}]
    pruner = L1FilterPruner(model, config, dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    stem = masks["stem"]["weight"].reshape(8, -1)[:, 0]
    second = masks["body.1.conv"]["weight"].reshape(6, -1)[:, 0]
    assert torch.equal(masks["body.0.bn"]["weight"], stem)
    assert torch.equal(masks["body.1.bn"]["weight"], torch.cat([stem, torch.ones(6)]))
    assert torch.equal(masks["body.2.bn"]["weight"], torch.cat([stem, torch.ones(6), second]))
    with torch.no_grad():
        masked = model(x)
    pruner.unwrap_model()
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    assert model.body[1].bn.num_features == 4 + 6 and report.params_after == 1207
    with torch.no_grad():
        assert torch.allclose(model(x), masked, rtol=1e-5, atol=1e-6)


def test_mask_file_export_and_reload(tmp_path):
    model, x, pruner = pruned_resnet()
    with torch.no_grad():
        masked = model(x)
    pruner.export_model(model_path=tmp_path / "model.pth", mask_path=tmp_path / "mask.pth")
    masks = load_masks(tmp_path / "mask.pth")
    assert masks["body.1.down.1"]["weight"].shape == (16,) and masks["body.1.down.1"]["bias"].shape == (16,)
    fresh, _ = build("resnet_basic")
    fresh.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh(x), masked)
    ModelSpeedup(fresh, x, tmp_path / "mask.pth").speedup_model()
    with torch.no_grad():
        assert torch.allclose(fresh(x), masked, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in fresh.parameters()) == 2638


def test_state_dict_restores_the_follower_masks():
    _, _, pruner = pruned_resnet()
    model, x = build("resnet_basic")
    with torch.no_grad():  # other weights, other masks until the state is loaded
        for conv in (model.stem[0], model.body[0].conv2):
            conv.weight.copy_(conv.weight.flip(0))
    fresh = L1FilterPruner(model, CONFIG, dependency_aware=True, dummy_input=x)
    fresh.compress()
    assert not torch.equal(fresh.get_masks()["stem.1"]["weight"], pruner.get_masks()["stem.1"]["weight"])
    fresh.load_state_dict(pruner.state_dict())
    assert {name: kept(entry["weight"]) for name, entry in fresh.get_masks().items()} == {
        name: kept(entry["weight"]) for name, entry in pruner.get_masks().items()}


def test_activation_pruner_ranks_only_the_selected_layers():
    model, x = build("resnet_basic")
    pruner = ActivationMeanRankFilterPruner(model, CONFIG, statistics_batch_num=1, dependency_aware=True,
                                            dummy_input=x)
    pruner.compress()
    assert sorted(pruner.statistics) == sorted(layer.name for layer in pruner.ranked_layers)
    with torch.no_grad():
        model(x)
    masks = pruner.get_masks()
    assert kept(masks["body.2.bn1"]["weight"]) == kept(masks["body.2.conv1"]["weight"])
    assert len(kept(masks["body.2.bn1"]["weight"])) == 8


def test_without_dependency_awareness_nothing_follows():
    model, x = build("resnet_basic")
    pruner = L1FilterPruner(model, CONFIG)
    pruner.compress()
    assert pruner.followers == [] and "stem.1" not in pruner.get_masks()


def test_a_batchnorm_the_config_selects_is_ranked_not_followed():
    model, x = build("resnet_basic")
    config = [{"sparsity": 0.5, "op_types": ["BatchNorm2d", "Conv2d"]}]
    pruner = L1FilterPruner(model, config, dependency_aware=True, dummy_input=x)
    assert pruner.followers == []
    pruner.compress()
    assert np.isclose(float(pruner.get_masks()["stem.1"]["weight"].mean()), 0.5)


def test_agp_schedules_the_followers_with_their_filters():
    model, x = build("resnet_basic")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    config = [{"initial_sparsity": 0.0, "final_sparsity": 0.5, "start_epoch": 0, "end_epoch": 2, "frequency": 1,
               "op_types": ["Conv2d"]}]
    pruner = AGPPruner(model, config, optimizer, pruning_algorithm="l1", dependency_aware=True, dummy_input=x)
    pruner.compress()
    assert "stem.1" in pruner.get_masks() and int(pruner.get_masks()["stem.1"]["weight"].sum()) == 8
    for epoch in range(3):
        pruner.update_epoch(epoch)
    masks = pruner.get_masks()
    for bn, conv in (("stem.1", "stem.0"), ("body.1.down.1", "body.1.down.0"), ("body.2.bn1", "body.2.conv1")):
        assert kept(masks[bn]["weight"]) == kept(masks[conv]["weight"]), bn
        assert len(kept(masks[bn]["weight"])) == masks[bn]["weight"].numel() // 2, bn
    with torch.no_grad():
        masked = model(x)
    pruner.unwrap_model()
    ModelSpeedup(model, x, masks).speedup_model()
    with torch.no_grad():
        assert torch.allclose(model(x), masked, rtol=1e-5, atol=1e-6)
    assert model.stem[1].num_features == 4
