"""``ConverterOptions(dynamic_batch=True)`` on Hugging Face models (tiny configs, random weights, no download): their
embeddings expand buffers to the captured batch (BERT's ``token_type_ids``, ViT's class token), which the file writes
as one row broadcast to the batch at run time."""

from __future__ import annotations

import os

import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter, verify
from slimkit.errors import UnsupportedOpError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def hugging_face(kind: str) -> tuple[nn.Module, torch.Tensor]:
    import transformers

    text = dict(vocab_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                max_position_embeddings=16, hidden_size=32)
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(**text))
    elif kind == "bert_classifier":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**text, num_labels=3))
    elif kind == "distilbert":
        model = transformers.DistilBertModel(transformers.DistilBertConfig(
            vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=37, max_position_embeddings=16))
    else:
        model = transformers.ViTModel(transformers.ViTConfig(
            image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=37))
        return model.eval(), torch.randn(1, 3, 16, 16)
    return model.eval(), torch.randint(0, 64, (1, 8))


def batch_of(x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.randint(0, 64, (batch, *x.shape[1:])) if x.dtype == torch.long else torch.randn(batch, *x.shape[1:])


slow = pytest.mark.slow


@pytest.mark.parametrize("kind, int8", [
    ("bert", False), ("bert", True), ("vit", True),
    pytest.param("bert_classifier", False, marks=slow), pytest.param("bert_classifier", True, marks=slow),
    pytest.param("distilbert", False, marks=slow), pytest.param("distilbert", True, marks=slow),
    pytest.param("vit", False, marks=slow)])
def test_hugging_face_file_runs_any_batch(tmp_path, kind, int8):
    """Converted at batch 1, resized to 1, 3 and 5 rows: float files equal PyTorch, int8 files equal
    ``emulate_integer()`` exactly."""
    torch.manual_seed(0)
    model, x = hugging_face(kind)
    if int8:
        quantizer = PostTrainingQuantizer(model, [{"quant_types": ["weight", "input", "output"], "quant_bits": 8,
                                                   "op_types": ["default"]}], algorithm="minmax", dummy_input=(x,))
        quantizer.compress()
        quantizer.calibrate([(batch_of(x, 2),) for _ in range(2)])
    path = tmp_path / f"{kind}.tflite"
    TFLiteConverter(model, x, path, dynamic_batch=True).convert()
    assert Interpreter(model_path=str(path)).get_input_details()[0]["shape_signature"][0] == -1
    for batch in (1, 3, 5):
        result = verify(model, batch_of(x, batch), path, draws=1)
        assert result.emulated_integer == int8
        assert result.max_abs_error == 0.0 if int8 else result.max_abs_error < 1e-5, (batch, result)


class ExpandedIntoMatmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(1, 3, 4))

    def forward(self, x):
        return torch.bmm(x, self.w.expand(x.size(0), -1, -1))


class ExpandedAlongTheBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(1, 3))

    def forward(self, x):
        return torch.cat([x, self.w.expand(x.size(0), -1)], 0)


@pytest.mark.parametrize("model, x, op", [(ExpandedIntoMatmul(), torch.randn(1, 5, 3), "BATCH_MATMUL"),
                                          (ExpandedAlongTheBatch(), torch.randn(1, 3), "CONCATENATION")])
def test_expanded_constant_an_op_cannot_broadcast_is_refused_by_name(tmp_path, model, x, op):
    path = tmp_path / "never.tflite"
    with pytest.raises(UnsupportedOpError, match=f"dynamic_batch: {op} at <root> .*expanded to the batch"):
        TFLiteConverter(model.eval(), x, path, dynamic_batch=True).convert()
    assert not path.exists()
