"""Probe: can LiteRT run an int8 FULLY_CONNECTED whose weight is stored with TFLite's sparsity encoding?

slimkit's ``sparse_weights=True`` keeps int8 FULLY_CONNECTED weights dense because XNNPACK (LiteRT's default
delegate) refuses an int8 FC fed by DENSIFY. This probe writes the other two layouts TFLite defines, the sparse
constant read by the FC directly (no DENSIFY), and runs them beside the dense file:

* ``random``: 2 dimensions, rows DENSE and columns SPARSE_CSR (what TF's converter writes for float FC kernels);
* ``block16``: 3 dimensions, rows DENSE, 16-wide column blocks SPARSE_CSR, the block DENSE (``block_map [1]``),
  the layout of TFLite's ``FullyConnectedSparseWeight1x16`` int8 kernel; the pruning keeps or drops whole blocks.

It patches slimkit's converter for the run (the sparse constant goes straight into the int8 FC; ``block16`` writes
the block dimension), converts one PTQ-quantized ``nn.Linear(IN, OUT)`` with SPARSITY of its weight zeroed,
and prints, per LiteRT op resolver, how many int8 outputs differ from the dense file and by how many steps, and the
median invoke time of both files (one thread).

    python benchmarks/probe_sparse_int8_fc.py [random|block16] [IN] [OUT] [SPARSITY]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tflite
import torch
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from torch import nn

import slimkit.converter.sparse as sparse
from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import ConverterOptions, TFLiteConverter
from slimkit.converter.ir import Tensor
from slimkit.converter.writer import _offset_vector


def _csr(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    segments = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    return sparse._smallest_index(segments), sparse._smallest_index(np.nonzero(keep)[1])


def sparse_fc_weight(w: Tensor, layout: str) -> Tensor:
    dense = w.values()
    if layout == "random":
        keep = dense != 0
        values, order = dense[keep], (0, 1)
    else:
        blocks = dense.reshape(dense.shape[0], -1, 16)
        keep = blocks.any(axis=2)
        values, order = blocks[keep].reshape(-1), (0, 1, 2)
    segments, indices = _csr(keep)
    return Tensor(f"{w.name}_sparse", dense.shape, w.dtype, data=values, quant=w.quant,
                  sparsity=sparse.Sparsity(dense.shape, order, segments, indices))


def patch_converter(layout: str) -> None:
    encode, write = sparse.encode_sparse_weights, sparse.write_sparsity

    def encode_with_fc(graph):
        count = encode(graph)
        for op in graph.ops:
            if op.code == "FULLY_CONNECTED" and op.inputs[1].is_const and op.inputs[1].dtype == "int8":
                op.inputs[1] = sparse_fc_weight(op.inputs[1], layout)
        return count

    def write_block16(builder, s):
        if len(s.order) != 3:
            return write(builder, s)
        dims = []
        for kind, size, vectors in ((tflite.DimensionType.DENSE, s.dense_shape[0], None),
                                    (tflite.DimensionType.SPARSE_CSR, None, (s.segments, s.indices)),
                                    (tflite.DimensionType.DENSE, 16, None)):
            if vectors is not None:
                (seg_type, segs), (idx_type, idx) = (sparse._index_vector(builder, v) for v in vectors)
            tflite.DimensionMetadataStart(builder)
            tflite.DimensionMetadataAddFormat(builder, kind)
            if vectors is None:
                tflite.DimensionMetadataAddDenseSize(builder, int(size))
            else:
                tflite.DimensionMetadataAddArraySegmentsType(builder, seg_type)
                tflite.DimensionMetadataAddArraySegments(builder, segs)
                tflite.DimensionMetadataAddArrayIndicesType(builder, idx_type)
                tflite.DimensionMetadataAddArrayIndices(builder, idx)
            dims.append(tflite.DimensionMetadataEnd(builder))
        order = builder.CreateNumpyVector(np.asarray([0, 1, 2], np.int32))
        block_map = builder.CreateNumpyVector(np.asarray([1], np.int32))
        dim_vec = _offset_vector(builder, tflite.SparsityParametersStartDimMetadataVector, dims)
        tflite.SparsityParametersStart(builder)
        tflite.SparsityParametersAddTraversalOrder(builder, order)
        tflite.SparsityParametersAddBlockMap(builder, block_map)
        tflite.SparsityParametersAddDimMetadata(builder, dim_vec)
        return tflite.SparsityParametersEnd(builder)

    sparse.encode_sparse_weights, sparse.write_sparsity = encode_with_fc, write_block16


def pruned_linear(n_in: int, n_out: int, sparsity: float, layout: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(n_in, n_out)).eval()
    with torch.no_grad():
        if layout == "block16":  # whole 1x16 blocks
            keep = (torch.rand(n_out, n_in // 16, 1) >= sparsity).float().expand(-1, -1, 16).reshape(n_out, n_in)
        else:
            keep = (torch.rand(n_out, n_in) >= sparsity).float()
        model[0].weight.mul_(keep)
    x = torch.randn(1, n_in)
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}],
                                algorithm="minmax", dummy_input=x)
    ptq.compress()
    ptq.calibrate([torch.randn(8, n_in) for _ in range(2)])
    return model.eval(), x


def run(path: str, resolver, inputs: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    """Int8 outputs (before the DEQUANTIZE) on ``inputs``, their scale, median invoke ms."""
    kwargs = {} if resolver is None else {"experimental_op_resolver_type": resolver}
    interpreter = Interpreter(model_path=path, num_threads=1, experimental_preserve_all_tensors=False, **kwargs)
    interpreter.allocate_tensors()
    [inp], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    dequantize = next(op for op in interpreter._get_ops_details() if op["op_name"] == "DEQUANTIZE")
    scale = interpreter.get_tensor_details()[dequantize["inputs"][0]]["quantization"][0]
    results = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        results.append(np.round(interpreter.get_tensor(out["index"]).astype(np.float64) / scale))
    times = []
    for _ in range(300):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(1000 * (time.perf_counter() - start))
    return np.stack(results), scale, statistics.median(times)


def main(layout: str = "block16", n_in: str = "1024", n_out: str = "1024", sparsity: str = "0.8") -> None:
    patch_converter(layout)
    model, x = pruned_linear(int(n_in), int(n_out), float(sparsity), layout)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, int(n_in))).astype(np.float32) for _ in range(8)]
    with tempfile.TemporaryDirectory() as folder:
        dense, encoded = os.path.join(folder, "dense.tflite"), os.path.join(folder, "sparse.tflite")
        TFLiteConverter(model, x, dense).convert()
        TFLiteConverter(model, x, encoded, options=ConverterOptions(sparse_weights=True)).convert()
        print(f"{layout} {n_in}x{n_out}, {float(sparsity):.0%} zeros: dense {os.path.getsize(dense):,} B, "
              f"sparse {os.path.getsize(encoded):,} B")
        for name, resolver in (("XNNPACK (default)", None),
                               ("builtin", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
                               ("builtin reference", OpResolverType.BUILTIN_REF)):
            try:
                a, _, dense_ms = run(dense, resolver, inputs)
                b, _, sparse_ms = run(encoded, resolver, inputs)
            except (RuntimeError, ValueError) as error:
                print(f"  {name}: sparse file refused: {str(error).strip()}")
                continue
            steps = np.abs(a - b)
            print(f"  {name}: {int((steps > 0).sum())} of {steps.size} outputs differ from the dense file "
                  f"(max {int(steps.max())} steps); median invoke dense {dense_ms:.4f} ms, sparse {sparse_ms:.4f} ms")


if __name__ == "__main__":
    main(*sys.argv[1:])
