"""Free parameters on the residual stream (a ViT's class token and position table, a layer scale): masked with the
stream by a dependency-aware pruner, applied in the owner's forward while the model is wrapped, written to the mask
file under ``'<module>.<attribute>'``, and cut with the stream by speedup; the output equals the masked model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit import MaskError
from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.converter import TFLiteConverter, verify
from slimkit.speedup import ModelSpeedup

WIDTH, PATCHES = 8, 4


class Embeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, WIDTH))
        self.position = nn.Parameter(torch.randn(1, PATCHES + 1, WIDTH))

    def forward(self, x):
        patches = self.patch(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches], 1) + self.position


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.fc1, self.fc2 = nn.Linear(WIDTH, 16), nn.Linear(16, WIDTH)
        self.scale = nn.Parameter(torch.rand(WIDTH) + 0.5)

    def forward(self, x):
        return x + self.scale * self.fc2(torch.relu(self.fc1(self.norm(x))))


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = Embeddings()
        self.block = Block()
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x):
        return self.head(self.norm(self.block(self.embeddings(x)))[:, 0])


CONFIG = [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}, {"exclude": True, "op_names": ["head"]}]
FREE = ["embeddings.cls_token", "embeddings.position", "block.scale"]


def masked_reference(model: nn.Module, masks: dict, x: torch.Tensor) -> torch.Tensor:
    modules = dict(model.named_modules())
    overrides = {}
    for name, entry in masks.items():
        if name not in modules:
            overrides[name] = model.get_parameter(name) * entry["weight"]
            continue
        for kind in ("weight", "bias"):
            if entry.get(kind) is not None:
                overrides[f"{name}.{kind}"] = getattr(modules[name], kind) * entry[kind]
    with torch.no_grad():
        return torch.func.functional_call(model, overrides, (x,))


def build() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyViT().eval(), torch.randn(2, 3, 8, 8)


def pruned() -> tuple[nn.Module, torch.Tensor, L1FilterPruner]:
    model, x = build()
    pruner = L1FilterPruner(model, CONFIG, dependency_aware=True, dummy_input=x)
    pruner.compress()
    return model, x, pruner


def test_free_parameters_follow_the_stream_and_apply_while_wrapped():
    model, x, pruner = pruned()
    originals = [model.get_parameter(name) for name in FREE]
    assert [layer.name for layer in pruner.followers] == FREE + ["block.norm", "norm"]
    masks = pruner.get_masks()
    stream = masks["embeddings.patch"]["bias"]
    assert int(stream.sum()) == WIDTH // 2
    for name in FREE:
        assert masks[name]["bias"] is None
        assert torch.equal(masks[name]["weight"], stream.expand_as(model.get_parameter(name)))
    with torch.no_grad():
        wrapped = model(x)
    assert [model.get_parameter(name) for name in FREE] == originals  # never written, back after the forward
    pruner.unwrap_model()
    assert torch.equal(wrapped, masked_reference(model, masks, x))
    assert not model.embeddings._forward_pre_hooks and not model.embeddings._forward_hooks
    assert [model.get_parameter(name) for name in FREE] == originals


def test_speedup_cuts_the_free_parameters_with_the_stream():
    model, x, pruner = pruned()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    expected = masked_reference(model, masks, x)
    ModelSpeedup(model, x, masks).speedup_model()
    shapes = [tuple(model.get_parameter(name).shape) for name in FREE]
    assert shapes == [(1, 1, 4), (1, PATCHES + 1, 4), (4,)]
    assert (model.embeddings.patch.out_channels, model.block.fc1.in_features, model.head.in_features) == (4, 4, 4)
    assert sum(p.numel() for p in model.parameters()) == 331  # 787 before
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)


def test_export_and_mask_file_carry_the_free_parameters(tmp_path):
    model, x, pruner = pruned()
    masks = pruner.get_masks()
    pruner.export_model(model_path=str(tmp_path / "model.pth"), mask_path=str(tmp_path / "mask.pth"))
    assert [model.get_parameter(name).abs().min() > 0 for name in FREE[:2]] == [True, True]  # not baked in place
    fresh, _ = build()
    fresh.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    pruner.unwrap_model()
    expected = masked_reference(model, masks, x)
    assert torch.equal(fresh.embeddings.cls_token, model.embeddings.cls_token * masks[FREE[0]]["weight"])
    with torch.no_grad():
        assert torch.allclose(fresh(x), expected, rtol=1e-6, atol=1e-7)
    ModelSpeedup(fresh, x, str(tmp_path / "mask.pth")).speedup_model()
    with torch.no_grad():
        assert torch.allclose(fresh(x), expected, rtol=1e-5, atol=1e-6)
    assert tuple(fresh.embeddings.position.shape) == (1, PATCHES + 1, 4)


def test_a_free_parameter_mask_of_the_wrong_shape_is_refused():
    model, x = build()
    with pytest.raises(MaskError, match="embeddings.cls_token"):
        ModelSpeedup(model, x, {"embeddings.cls_token": {"weight": torch.ones(1, 1, 4), "bias": None}})


def test_resume_and_tflite_file_keep_the_free_parameter_masks(tmp_path):
    """A rebuilt pruner loading the state gets the same masks and outputs; the wrapped model converts with the masks
    applied (its capture first tries a path on which the mask's hook fails: nothing of that call may stay)."""
    model, x, pruner = pruned()
    fresh, _ = build()
    resumed = L1FilterPruner(fresh, CONFIG, dependency_aware=True, dummy_input=x)
    resumed.compress()
    resumed.load_state_dict(pruner.state_dict())
    masks = pruner.get_masks()
    assert all(torch.equal(masks[name]["weight"], resumed.get_masks()[name]["weight"]) for name in FREE)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    path = str(tmp_path / "model.tflite")
    TFLiteConverter(model, x, path).convert()
    assert verify(model, x, path).max_abs_error < 1e-5
    pruner.unwrap_model()
    with torch.no_grad():
        assert torch.allclose(masked_reference(model, masks, x), resumed.model(x), rtol=1e-6, atol=1e-7)
