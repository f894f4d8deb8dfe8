"""Pruner lifecycle and mask validation in the framework-neutral core (driven through the PyTorch adapter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import slimkit
from slimkit import CompressionStateError, SlimkitError
from slimkit.compression import Pruner


class ConstantPruner(Pruner):
    """Returns whatever mask the test hands it."""

    mask: object = None

    def calc_mask(self, layer, config, **kwargs):
        return self.mask


def make(mask):
    model = nn.Sequential(nn.Linear(2, 2))
    pruner = ConstantPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.mask = mask
    return model, pruner


def test_weight_and_bias_masks_from_dict_apply_in_forward():
    model, pruner = make({"weight": np.array([[1, 0], [0, 1]], dtype=np.float32), "bias": np.array([0, 1])})
    linear = model[0]
    pruner.compress()
    x = torch.tensor([[2.0, 3.0]])
    expected = torch.stack([2.0 * linear.weight[0, 0], 3.0 * linear.weight[1, 1] + linear.bias[1]])
    assert torch.equal(model(x)[0], expected)
    masks = pruner.get_masks()["0"]
    assert masks["weight"].tolist() == [[1.0, 0.0], [0.0, 1.0]] and masks["bias"].tolist() == [0.0, 1.0]


def test_native_tensor_mask_is_accepted():
    _, pruner = make(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    pruner.compress()
    assert pruner.get_masks()["0"]["weight"].tolist() == [[0.0, 1.0], [1.0, 1.0]]


def test_wrong_shape_mask_names_layer_and_shapes():
    _, pruner = make(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(SlimkitError, match=r"weight mask of layer '0' has the wrong shape. Expected \(2, 2\). "
                                           r"Received: shape=\(3, 2\)"):
        pruner.compress()


def test_non_binary_mask_is_rejected():
    _, pruner = make(np.full((2, 2), 0.5, dtype=np.float32))
    with pytest.raises(SlimkitError, match="must hold only 0 and 1"):
        pruner.compress()


def test_get_masks_before_compress_is_a_lifecycle_error():
    _, pruner = make(np.ones((2, 2), dtype=np.float32))
    with pytest.raises(CompressionStateError, match=r"call compress\(\) before get_masks\(\)"):
        pruner.get_masks()


def test_unwrap_restores_the_exact_original_modules_and_weights():
    model, pruner = make(np.zeros((2, 2), dtype=np.float32))
    original = model[0]
    weight_before = original.weight.detach().clone()
    pruner.compress()
    assert model[0] is not original
    pruner.unwrap_model()
    assert model[0] is original and torch.equal(original.weight, weight_before)


def test_step_and_update_epoch_are_harmless_without_a_schedule():
    model, pruner = make(np.array([[1, 0], [1, 1]], dtype=np.float32))
    pruner.compress()
    pruner.update_epoch(3)
    pruner.step()
    assert pruner.get_masks()["0"]["weight"].tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_second_compressor_on_a_wrapped_layer_is_refused():
    model, pruner = make(np.ones((2, 2), dtype=np.float32))
    pruner.compress()
    second = ConstantPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    assert second.layers[0].name == "0"
    with pytest.raises(CompressionStateError, match=r"already wrapped by ConstantPruner \(a pruner\)"):
        second.compress()


def test_load_masks_rejects_non_mask_files(tmp_path):
    path = tmp_path / "not_masks.pth"
    path.write_bytes(b"plain text")
    with pytest.raises(SlimkitError, match="Expected a mask file written by export_model"):
        slimkit.load_masks(path)
    with pytest.raises(SlimkitError, match="Expected an existing mask file"):
        slimkit.load_masks(tmp_path / "missing.pth")


def test_load_masks_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"fc": {"weight": Evil()}}, path)
    with pytest.raises(SlimkitError, match="weights-only loading"):
        slimkit.load_masks(path)


def test_load_masks_reads_npz(tmp_path):
    path = tmp_path / "masks.npz"
    np.savez(path, **{"dense::weight": np.ones((2, 3)), "dense::bias": np.zeros(3)})
    masks = slimkit.load_masks(path)
    assert masks["dense"]["weight"].shape == (2, 3) and masks["dense"]["bias"].tolist() == [0, 0, 0]


def test_atomic_path_leaves_no_file_on_failure(tmp_path):
    from slimkit.utils import atomic_path

    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_refusal_leaves_no_layer_wrapped():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    first = ConstantPruner(model, [{"sparsity": 0.5, "op_names": ["1"]}])
    first.mask = np.ones((2, 2), dtype=np.float32)
    first.compress()
    second = ConstantPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    with pytest.raises(CompressionStateError, match="Layer '1' is already wrapped"):
        second.compress()
    assert type(model[0]) is nn.Linear  # nothing was wrapped before the refusal
