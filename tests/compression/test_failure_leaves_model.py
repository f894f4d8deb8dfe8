"""Validation before mutation: a failing calibrate() or export_model() leaves the model, its state dict, the
wrappers and every destination file as they were."""

from __future__ import annotations

import os

import pytest
import torch

from slimkit import ConfigError, NonFiniteError, SlimkitError
from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.frameworks.torch.wrapper import CompressionWrapper
from slimkit.models.digits import DigitsCNN
from tests.compression.test_checkpoint_resume import assert_identical

X = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
CONFIG = [{"quant_types": ["input", "weight", "output"], "op_types": ["Conv2d", "Linear"]}]
BAD_BATCHES = {
    "shape": torch.rand(8, 3, 8, 8),
    "dtype": torch.randint(0, 5, (8, 1, 8, 8)),
    "nan": torch.full((8, 1, 8, 8), float("nan")),
    "inf": torch.full((8, 1, 8, 8), float("inf")),
}


def _ptq(algorithm: str = "kl") -> tuple[torch.nn.Module, PostTrainingQuantizer]:
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    return model, PostTrainingQuantizer(model, CONFIG, algorithm=algorithm, dummy_input=X[:1], progress=False)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("bad", list(BAD_BATCHES))
def test_a_bad_first_calibration_leaves_no_wrapper_behind(bad: str) -> None:
    model, ptq = _ptq()
    before, quantizer_before = _snapshot(model), ptq.state_dict()
    error = NonFiniteError if bad in ("nan", "inf") else SlimkitError
    with pytest.raises(error, match="layer 'conv1'" if error is NonFiniteError else "batch 1 could not run"):
        ptq.calibrate([X, BAD_BATCHES[bad]])
    assert not ptq.wrapped and not any(isinstance(module, CompressionWrapper) for module in model.modules())
    assert_identical(before, model.state_dict())
    assert_identical(quantizer_before, ptq.state_dict())
    ptq.calibrate([X])  # and it still calibrates afterwards
    assert ptq.calibrated


def test_a_bad_batch_in_a_later_calibration_keeps_the_earlier_ranges() -> None:
    model, ptq = _ptq()
    ptq.calibrate([X])
    before, quantizer_before = _snapshot(model), ptq.state_dict()
    with torch.no_grad():
        expected = model(X)
    with pytest.raises(SlimkitError, match="batch 2 could not run"):
        ptq.calibrate([X * 2, X * 3, BAD_BATCHES["shape"]])
    assert ptq.wrapped and ptq.calibrated
    assert_identical(before, model.state_dict())
    assert_identical(quantizer_before, ptq.state_dict())
    with torch.no_grad():
        assert torch.equal(model(X), expected)


def _files(directory: str) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def test_pruner_export_writes_nothing_when_the_onnx_export_fails(tmp_path) -> None:
    torch.manual_seed(0)
    pruner = L1FilterPruner(DigitsCNN(width=8), [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    (tmp_path / "mask.pth").write_bytes(b"an older mask file")
    before = _files(str(tmp_path))
    with pytest.raises(SlimkitError,
                       match=r"ONNX export of DigitsCNN on inputs \[\(1, 3, 8, 8\) torch.float32\] failed"):
        pruner.export_model(tmp_path / "model.pth", tmp_path / "mask.pth", tmp_path / "model.onnx",
                            input_shape=[1, 3, 8, 8])
    assert _files(str(tmp_path)) == before  # no new file, the old mask file untouched, no temporary left


@pytest.mark.parametrize("shape", [[1, 0, 8, 8], "1x1x8x8", [1.0, 1, 8, 8], []])
def test_a_malformed_input_shape_is_refused_before_anything_is_written(tmp_path, shape) -> None:
    pruner = L1FilterPruner(DigitsCNN(width=8), [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    with pytest.raises(ConfigError, match="Expected input_shape to be a non-empty list of positive ints"):
        pruner.export_model(tmp_path / "model.pth", onnx_path=tmp_path / "model.onnx", input_shape=shape)
    assert os.listdir(tmp_path) == []


def test_quantizer_export_traces_dummy_input_without_input_shape_and_writes_all_or_nothing(tmp_path) -> None:
    torch.manual_seed(0)
    qat = QATQuantizer(DigitsCNN(width=8), CONFIG, dummy_input=X[:1])
    model = qat.compress()
    model(X)
    with pytest.raises(SlimkitError, match="ONNX export"):
        qat.export_model(tmp_path / "qat.pth", tmp_path / "calib.json", tmp_path / "qat.onnx", input_shape=[1, 2, 8, 8])
    assert os.listdir(tmp_path) == []
    qat.export_model(tmp_path / "qat.pth", tmp_path / "calib.json", tmp_path / "qat.onnx")
    assert sorted(os.listdir(tmp_path)) == ["calib.json", "qat.onnx", "qat.pth"]
    import onnx

    graph = onnx.load(str(tmp_path / "qat.onnx")).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 1, 8, 8]
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)


def test_without_input_shape_or_dummy_input_onnx_export_is_refused(tmp_path) -> None:
    pruner = L1FilterPruner(DigitsCNN(width=8), [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    with pytest.raises(ConfigError, match="input_shape such as .* or dummy_input given to the compressor"):
        pruner.export_model(tmp_path / "model.pth", onnx_path=tmp_path / "model.onnx")
    assert os.listdir(tmp_path) == []
