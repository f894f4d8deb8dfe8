"""Whole-graph PTQ keeps attention-mask arithmetic built from token ids in float: the fill (finfo.min) never
takes an int8 grid, padded positions get exactly zero attention, and the int8 file equals the emulation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.converter.verify import run_tflite

WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


class MaskedAttention(nn.Module):
    """Token ids -> embedding -> one attention head whose scores get an additive padding mask (HF's eager
    attention: ``(1 - mask) * finfo.min``) -> attention weights."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, ids):
        h = self.embed(ids)
        keep = (ids != 0).to(torch.float32)
        fill = (1.0 - keep[:, None, :]) * torch.finfo(torch.float32).min
        scores = self.q(h) @ self.k(h).transpose(1, 2) / 8 ** 0.5
        return (scores + fill).softmax(-1)


def _ids(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (4, 6), generator=g)
    ids[:, 4:] = 0  # two padded positions per sentence
    ids[0, 3:] = 0
    return ids


def test_mask_stays_float_and_padding_gets_zero_attention(tmp_path):
    torch.manual_seed(0)
    model = MaskedAttention().eval()
    batches = [_ids(seed) for seed in range(4)]
    with torch.no_grad():
        expected = torch.cat([model(ids) for ids in batches])
    ptq = PostTrainingQuantizer(model, WHOLE_GRAPH, dummy_input=batches[0], progress=False)
    ptq.compress()
    ptq.calibrate(batches)
    kinds = {key: meta["kind"] for key, meta in ptq.graph_meta.items()}
    # the embedding, the score matmul and the softmax are quantized; the mask (to, rsub, mul) and the masked add are not
    assert sorted(kinds.values()) == ["div", "embedding", "matmul", "softmax", "transpose"]
    assert all(float(p.scale.max()) < 1.0 for p in ptq.graph_params.values())  # no grid sized by finfo.min
    with torch.no_grad():
        got = torch.cat([model(ids) for ids in batches])
    padded = torch.cat(batches) == 0
    assert torch.equal(got[padded[:, None, :].expand_as(got)], torch.zeros(int(padded.sum()) * 6))
    assert (got - expected).abs().max() <= 0.02  # a few softmax steps (1/256)
    path = tmp_path / "masked.tflite"
    TFLiteConverter(model, batches[0], path).convert()
    with torch.no_grad(), ptq.emulate_integer():
        for ids in batches:
            np.testing.assert_allclose(run_tflite(path, [ids.numpy()])[0], model(ids).numpy(), rtol=0, atol=1e-6)
