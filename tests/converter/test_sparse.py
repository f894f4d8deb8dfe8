"""Sparse weights (``sparse_weights=True``): TFLite sparsity encoding + DENSIFY, equal to the dense file."""

from __future__ import annotations

import numpy as np
import pytest
import tflite
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.converter import TFLiteConverter
from slimkit.converter.sparse import csr_layout, traversal_order
from slimkit.converter.verify import run_tflite
from tests.converter.conftest import op_codes, read_model
from tests.converter.test_int8 import quantize

_NP = {0: np.float32, 2: np.int32, 9: np.int8}
_INDEX = {tflite.SparseIndexVector.Int32Vector: tflite.Int32Vector,
          tflite.SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
          tflite.SparseIndexVector.Uint8Vector: tflite.Uint8Vector}


def pruned_net(sparsity: float) -> nn.Module:
    """Conv, depthwise conv and linear with ``sparsity`` of each weight zeroed at random (unstructured)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, groups=64), nn.ReLU(),
                          nn.Conv2d(64, 128, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(128, 300), nn.ReLU(), nn.Linear(300, 10)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_((torch.rand_like(p) >= sparsity).float())
    return model


def _index_values(dim, kind: str) -> np.ndarray:
    table = getattr(dim, kind)()
    vec = _INDEX[getattr(dim, f"{kind}Type")()]()
    vec.Init(table.Bytes, table.Pos)
    return vec.ValuesAsNumpy()


def decoded_weights(path) -> tuple[dict[str, np.ndarray], set[str]]:
    """Every constant of the file by name (sparse ones decoded from their SparsityParameters, read independently of
    slimkit: traversal order, DENSE dims, one SPARSE_CSR dim last), and the names of the sparse ones."""
    model, sg = read_model(path)
    out, sparse = {}, set()
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int):
            continue
        values = data.view(_NP[t.Type()])
        shape = tuple(t.ShapeAsNumpy())
        s = t.Sparsity()
        if s is None:
            out[t.Name().decode()] = values.reshape(shape)
            continue
        order = s.TraversalOrderAsNumpy().tolist()
        assert sorted(order) == list(range(len(shape))) and s.BlockMapLength() == 0
        stored = [shape[a] for a in order]
        dims = [s.DimMetadata(d) for d in range(s.DimMetadataLength())]
        assert [d.Format() for d in dims] == [tflite.DimensionType.DENSE] * (len(shape) - 1) + \
            [tflite.DimensionType.SPARSE_CSR]
        assert [d.DenseSize() for d in dims[:-1]] == stored[:-1]
        segments, indices = _index_values(dims[-1], "ArraySegments"), _index_values(dims[-1], "ArrayIndices")
        dense = np.zeros((int(np.prod(stored[:-1])), stored[-1]), values.dtype)
        for row in range(dense.shape[0]):
            cols = indices[segments[row]:segments[row + 1]]
            dense[row, cols] = values[segments[row]:segments[row + 1]]
        out[t.Name().decode().removesuffix("_sparse")] = dense.reshape(stored).transpose(np.argsort(order))
        sparse.add(t.Name().decode().removesuffix("_sparse"))
    return out, sparse


def convert_pair(model, x, tmp_path) -> tuple:
    dense, sparse = tmp_path / "dense.tflite", tmp_path / "sparse.tflite"
    TFLiteConverter(model, x, dense).convert()
    TFLiteConverter(model, x, sparse, sparse_weights=True).convert()
    return dense, sparse


def assert_same_outputs(dense, sparse, shape, dtype=np.float32):
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.standard_normal(shape).astype(np.float32)
        a, b = run_tflite(dense, [x])[0], run_tflite(sparse, [x])[0]
        assert a.dtype == dtype and np.array_equal(a, b)


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_sparse_file_equals_dense_file(tmp_path, int8):
    model = pruned_net(0.8)
    x = torch.randn(1, 8, 8, 8)
    if int8:
        model, x = quantize(model, (8, 8, 8))
    dense, sparse = convert_pair(model, x, tmp_path)
    # int8 FULLY_CONNECTED weights stay dense (XNNPACK cannot take them from a DENSIFY)
    assert op_codes(sparse) == ["DENSIFY"] * (3 if int8 else 5) + op_codes(dense)
    assert_same_outputs(dense, sparse, (1, 8, 8, 8))
    (want, none), (got, encoded) = decoded_weights(dense), decoded_weights(sparse)
    assert got.keys() == want.keys() and not none and len(encoded) == (3 if int8 else 5)
    _, sg = read_model(sparse)
    orders = [tuple(sg.Tensors(i).Sparsity().TraversalOrderAsNumpy()) for i in range(sg.TensorsLength())
              if sg.Tensors(i).Sparsity() is not None]
    assert orders == [(1, 2, 3, 0), (0, 1, 2, 3), (1, 2, 3, 0)] + ([] if int8 else [(1, 0), (0, 1)])  # longest last
    for name, values in want.items():
        assert got[name].dtype == values.dtype and values.dtype == (np.int8 if int8 and name in encoded else
                                                                    got[name].dtype)
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    # at 80 % zeros: int8 values + one-byte indices are 40 % of the dense bytes, float32 ones 25 %; plus the rows
    # and about 250 bytes of tables per weight (DENSIFY, its tensor, SparsityParameters)
    saved = dense.stat().st_size - sparse.stat().st_size
    assert saved > (0.45 if int8 else 0.65) * sum(want[name].nbytes for name in encoded)

def test_weights_stay_dense_where_sparse_is_larger(tmp_path):
    """int8 at 40 % zeros: values + one index byte each outweigh the dense bytes, so no weight is encoded
    (float32 at 40 % is encoded: 4 + 1 bytes per nonzero < 4 per element)."""
    model, x = quantize(pruned_net(0.4), (8, 8, 8))
    dense, sparse = convert_pair(model, x, tmp_path)
    assert op_codes(sparse) == op_codes(dense) and sparse.stat().st_size == dense.stat().st_size
    float_dense, float_sparse = convert_pair(pruned_net(0.4), torch.randn(1, 8, 8, 8), tmp_path)
    assert op_codes(float_sparse).count("DENSIFY") == 5


def test_csr_layout_index_width():
    w = np.zeros((3, 300), np.float32)
    w[0, 299] = w[2, 5] = 1.5
    values, segments, indices = csr_layout(w)
    assert values.tolist() == [1.5, 1.5] and segments.tolist() == [0, 1, 1, 2] and indices.tolist() == [299, 5]
    assert segments.dtype == np.uint8 and indices.dtype == np.uint16
    # a conv weight [out=300, kh, kw, in=2]: CSR over the 300 output channels (6 rows), values in that order
    w = np.zeros((300, 1, 3, 2), np.float32)
    w[7, 0, 2, 1], w[3, 0, 0, 0] = 2.0, 1.0
    assert traversal_order(w.shape) == (1, 2, 3, 0)
    values, segments, indices = csr_layout(w)
    assert values.tolist() == [1.0, 2.0] and segments.tolist() == [0, 1, 1, 1, 1, 1, 2] and indices.tolist() == [3, 7]


class SharedHead(nn.Module):
    """One Linear applied to two inputs (the converter writes its weight once per call, dense or sparse)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, a, b):
        return self.fc(a) + self.fc(b)


def test_sparse_weights_with_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = SharedHead().eval()
    with torch.no_grad():
        model.fc.weight.mul_((torch.rand_like(model.fc.weight) >= 0.8).float())
    a, b = torch.randn(1, 64), torch.randn(1, 64)
    path = tmp_path / "shared.tflite"
    TFLiteConverter(model, (a, b), path, sparse_weights=True, dynamic_batch=True).convert()
    assert op_codes(path) == ["DENSIFY", "DENSIFY", "FULLY_CONNECTED", "FULLY_CONNECTED", "ADD"]
    rng = np.random.default_rng(0)
    for rows in (1, 3):
        x, y = (rng.standard_normal((rows, 64)).astype(np.float32) for _ in range(2))
        want = model(torch.from_numpy(x), torch.from_numpy(y)).detach().numpy()
        np.testing.assert_allclose(run_tflite(path, [x, y])[0], want, rtol=1e-5, atol=1e-5)


def test_sparse_weights_must_be_a_bool(tmp_path):
    with pytest.raises(ConfigError, match="sparse_weights=True or False. Received: sparse_weights=0.8"):
        TFLiteConverter(pruned_net(0.8), torch.randn(1, 8, 8, 8), tmp_path / "m.tflite", sparse_weights=0.8)
    assert not (tmp_path / "m.tflite").exists()
