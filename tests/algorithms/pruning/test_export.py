"""export_model round trip: baked weights load into the original class; masks and ONNX read back."""

import os
import warnings

import numpy as np
import pytest
import torch

import slimkit
from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner, SlimPruner
from tests.algorithms.pruning.pruning_helpers import SmallNet


@pytest.mark.parametrize("pruner_class, op_types", [(LevelPruner, ["Conv2d", "Linear"]), (L1FilterPruner, ["Conv2d"]),
                                                     (SlimPruner, ["BatchNorm2d"])])
def test_weights_and_masks_round_trip(tmp_path, small_net, pruner_class, op_types):
    pruner = pruner_class(small_net, [{"sparsity": 0.5, "op_types": op_types}])
    pruner.compress()
    small_net.eval()
    x = torch.randn(3, 3, 6, 6)
    expected = small_net(x)
    model_path, mask_path = tmp_path / "model.pth", tmp_path / "mask.pth"
    pruner.export_model(model_path=model_path, mask_path=mask_path)

    fresh = SmallNet()
    fresh.load_state_dict(torch.load(model_path, weights_only=True))
    fresh.eval()
    torch.testing.assert_close(fresh(x), expected, rtol=1e-5, atol=1e-6)

    masks = slimkit.load_masks(mask_path)
    current = pruner.get_masks()
    assert masks.keys() == current.keys()
    for name, entry in masks.items():
        assert torch.equal(entry["weight"], current[name]["weight"])
        assert (entry["bias"] is None) == (current[name]["bias"] is None)
        weight = fresh.get_submodule(name).weight
        assert torch.all(weight[entry["weight"] == 0] == 0)  # zeros baked in
    wrapped = small_net.get_submodule(pruner.layers[0].name)
    assert type(wrapped).__name__ == "CompressionWrapper"  # the compressed model is left as is
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_onnx_export_matches_the_masked_model(tmp_path, small_net):
    import onnxruntime as ort

    pruner = L1FilterPruner(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    small_net.eval()
    onnx_path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of torch's own (its pytree LeafSpec deprecation) reaches the user
        pruner.export_model(tmp_path / "model.pth", tmp_path / "mask.pth", onnx_path, input_shape=[1, 3, 6, 6])
    assert os.path.getsize(onnx_path) > 0
    x = torch.randn(1, 3, 6, 6)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, small_net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_export_needs_input_shape_for_onnx(tmp_path, small_net):
    pruner = LevelPruner(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    with pytest.raises(slimkit.ConfigError, match="input_shape"):
        pruner.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx")
    assert not (tmp_path / "m.pth").exists()
