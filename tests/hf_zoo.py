"""Hugging Face ``transformers`` test zoo: 15 real architectures from tiny configs, random init, no downloads.

Every entry builds a model with the library's own classes (what a user brings), seeded and deterministic,
wrapped in a :class:`MainOutput` module that takes **one tensor** and returns **the main output tensor**
(logits for heads, ``last_hidden_state`` for bare encoders). The model is returned in eval mode, its weights
re-drawn by :func:`signal_preserving_init` (Hugging Face's own init lets the logits of the random CNNs underflow
to exactly 0, which would make every "output equals" check pass trivially).

Interface (stable: other test files import it as ``from tests.hf_zoo import ...``):

- ``HF_ARCHS: dict[str, Callable[[], tuple[nn.Module, Tensor]]]``: name -> builder returning
  ``(model, example_input)``. Two calls give equal weights and equal inputs.
- ``HF_FAMILY: dict[str, str]``: name -> one of :data:`FAMILIES` (``'text_encoder'``, ``'causal_decoder'``,
  ``'vision'`` (vision transformers), ``'cnn'``, ``'audio'``).
- ``HF_SPECS: dict[str, HFArch]``: the full record (``name``, ``family``, ``input_kind``, ``build()``,
  ``make_input(seed)``).
- ``hf_inputs(name, count, seed=0) -> list[Tensor]``: ``count`` different inputs of the example's shape and
  dtype (token ids in ``[0, VOCAB)``, images / mel features from a normal distribution), for calibration and
  parity on several inputs.

Sizes: hidden 32-64, 2 layers (or 2 stages), token sequences of :data:`SEQ_LEN` ids from a vocabulary of
:data:`VOCAB`, images ``1x3x32x32`` (MobileViT ``1x3x64x64``: its five downsamplings need it), Whisper
features ``1x16x32``. Batch 1 everywhere.

Example:

>>> model, x = HF_ARCHS['bert']()
>>> tuple(x.shape), x.dtype, HF_FAMILY['bert'], tuple(model(x).shape)
((1, 8), torch.int64, 'text_encoder', (1, 2))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import Tensor, nn  # noqa: E402

transformers.logging.set_verbosity_error()

FAMILIES = ('text_encoder', 'causal_decoder', 'vision', 'cnn', 'audio')
VOCAB = 99
SEQ_LEN = 8
IMAGE = 32
NUM_LABELS = 10
SEED = 0


class MainOutput(nn.Module):
    """Calls a ``transformers`` model on one tensor and returns one field of its output.

    Args:
        model: the Hugging Face model (reachable as ``self.model``, so layer names read ``model.<hf path>``).
        field: the output attribute to return (``'logits'``, ``'last_hidden_state'``).
    """

    def __init__(self, model: nn.Module, field: str):
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.model(x), self.field)


@dataclass(frozen=True)
class HFArch:
    """One zoo entry: how to build the model and what input it takes."""

    name: str
    family: str
    model_fn: Callable[[], nn.Module]
    field: str
    input_kind: str  # 'tokens' | 'image' | 'features'
    input_shape: tuple[int, ...]

    def make_input(self, seed: int = SEED) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        if self.input_kind == 'tokens':
            return torch.randint(0, VOCAB, self.input_shape, generator=gen)
        return torch.randn(self.input_shape, generator=gen)

    def build(self) -> tuple[nn.Module, Tensor]:
        torch.manual_seed(SEED)
        model = MainOutput(self.model_fn(), self.field).eval()
        signal_preserving_init(model, torch.cat([self.make_input(1000 + i) for i in range(8)]))
        return model, self.make_input()


def signal_preserving_init(model: nn.Module, batch: Tensor) -> None:
    """Re-draw weights so that activations keep their scale through the depth of the model (in place, seeded by
    the caller's RNG state).

    Hugging Face's ``_init_weights`` draws conv and linear weights with std 0.02 and leaves BatchNorm statistics
    at (0, 1): in a random CNN every conv shrinks the signal about 30x, and the logits of EfficientNet and MobileViT
    underflow to exactly 0, so any "output equals" check would pass trivially. Here weights get std
    ``1 / sqrt(fan_in)`` (every conv, linear and ``Conv1D`` weight), biases std 0.1, BatchNorm affine parameters
    away from the identity, and BatchNorm running statistics measured on ``batch`` (so each BatchNorm normalises
    what really reaches it, and folding it into its conv is not a no-op).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for module in model.modules():
            if module in norms:
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                continue
            weight, bias = module._parameters.get('weight'), module._parameters.get('bias')
            if isinstance(module, (nn.Embedding, nn.LayerNorm)) or weight is None or weight.dim() < 2:
                continue
            fan_in = weight.shape[0] if type(module).__name__ == 'Conv1D' else weight[0].numel()
            weight.normal_(0.0, fan_in ** -0.5)
            if bias is not None:
                bias.normal_(0.0, 0.1)
        if norms:
            for norm in norms:  # cumulative average over one pass: the batch's statistics
                norm.reset_running_stats()
                norm.momentum = None
                norm.train()
            model(batch)
            for norm in norms:
                norm.momentum = 0.1
                norm.eval()


def _text(**kw) -> dict:
    """Common causal-decoder / encoder sizes."""
    return dict(vocab_size=VOCAB, max_position_embeddings=64, **kw)


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(**_text(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64))
    return transformers.BertForSequenceClassification(cfg)


def _distilbert() -> nn.Module:
    cfg = transformers.DistilBertConfig(**_text(dim=32, n_layers=2, n_heads=4, hidden_dim=64))
    return transformers.DistilBertForSequenceClassification(cfg)


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  use_cache=False)
    return transformers.GPT2LMHeadModel(cfg)


def _llama() -> nn.Module:
    cfg = transformers.LlamaConfig(**_text(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, use_cache=False))
    return transformers.LlamaForCausalLM(cfg)


def _qwen2() -> nn.Module:
    cfg = transformers.Qwen2Config(**_text(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, use_cache=False))
    return transformers.Qwen2ForCausalLM(cfg)


def _t5_encoder() -> nn.Module:
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                use_cache=False)
    return transformers.T5EncoderModel(cfg)


def _vit() -> nn.Module:
    cfg = transformers.ViTConfig(image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64, num_labels=NUM_LABELS)
    return transformers.ViTForImageClassification(cfg)


def _deit() -> nn.Module:
    cfg = transformers.DeiTConfig(image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, num_labels=NUM_LABELS)
    return transformers.DeiTForImageClassification(cfg)


def _swin() -> nn.Module:
    cfg = transformers.SwinConfig(image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                  window_size=4, mlp_ratio=2.0, num_labels=NUM_LABELS)
    return transformers.SwinForImageClassification(cfg)


def _convnext() -> nn.Module:
    cfg = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=NUM_LABELS)
    return transformers.ConvNextForImageClassification(cfg)


def _resnet() -> nn.Module:
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type='basic',
                                    num_labels=NUM_LABELS)
    return transformers.ResNetForImageClassification(cfg)


def _mobilenet_v2() -> nn.Module:
    cfg = transformers.MobileNetV2Config(image_size=IMAGE, depth_multiplier=0.25, finegrained_output=False,
                                         num_labels=NUM_LABELS)
    return transformers.MobileNetV2ForImageClassification(cfg)


def _mobilevit() -> nn.Module:
    cfg = transformers.MobileViTConfig(image_size=2 * IMAGE, patch_size=2, hidden_sizes=[16, 24, 32],
                                       neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2,
                                       expand_ratio=2.0, num_labels=NUM_LABELS)
    return transformers.MobileViTForImageClassification(cfg)


def _efficientnet() -> nn.Module:
    cfg = transformers.EfficientNetConfig(image_size=IMAGE, width_coefficient=0.25, depth_coefficient=0.25,
                                          hidden_dim=320, num_labels=NUM_LABELS)  # hidden_dim = round_filters(1280)
    return transformers.EfficientNetForImageClassification(cfg)


def _whisper_encoder() -> nn.Module:
    cfg = transformers.WhisperConfig(vocab_size=VOCAB, num_mel_bins=16, d_model=32, encoder_layers=2,
                                     encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=1,
                                     decoder_attention_heads=4, decoder_ffn_dim=64, max_source_positions=16,
                                     max_target_positions=16, pad_token_id=0, bos_token_id=1,
                                     eos_token_id=2, decoder_start_token_id=1, use_cache=False)
    return transformers.WhisperModel(cfg).get_encoder()


_TOKENS = (1, SEQ_LEN)
_IMAGE = (1, 3, IMAGE, IMAGE)

_SPECS = [
    HFArch('bert', 'text_encoder', _bert, 'logits', 'tokens', _TOKENS),
    HFArch('distilbert', 'text_encoder', _distilbert, 'logits', 'tokens', _TOKENS),
    HFArch('gpt2', 'causal_decoder', _gpt2, 'logits', 'tokens', _TOKENS),
    HFArch('llama', 'causal_decoder', _llama, 'logits', 'tokens', _TOKENS),
    HFArch('qwen2', 'causal_decoder', _qwen2, 'logits', 'tokens', _TOKENS),
    HFArch('t5_encoder', 'text_encoder', _t5_encoder, 'last_hidden_state', 'tokens', _TOKENS),
    HFArch('vit', 'vision', _vit, 'logits', 'image', _IMAGE),
    HFArch('deit', 'vision', _deit, 'logits', 'image', _IMAGE),
    HFArch('swin', 'vision', _swin, 'logits', 'image', _IMAGE),
    HFArch('convnext', 'cnn', _convnext, 'logits', 'image', _IMAGE),
    HFArch('resnet', 'cnn', _resnet, 'logits', 'image', _IMAGE),
    HFArch('mobilenet_v2', 'cnn', _mobilenet_v2, 'logits', 'image', _IMAGE),
    HFArch('mobilevit', 'vision', _mobilevit, 'logits', 'image', (1, 3, 2 * IMAGE, 2 * IMAGE)),
    HFArch('efficientnet', 'cnn', _efficientnet, 'logits', 'image', _IMAGE),
    HFArch('whisper_encoder', 'audio', _whisper_encoder, 'last_hidden_state', 'features', (1, 16, 32)),
]

HF_SPECS: dict[str, HFArch] = {spec.name: spec for spec in _SPECS}
HF_ARCHS: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {spec.name: spec.build for spec in _SPECS}
HF_FAMILY: dict[str, str] = {spec.name: spec.family for spec in _SPECS}


def hf_inputs(name: str, count: int, seed: int = SEED) -> list[Tensor]:
    """``count`` different inputs for architecture ``name`` (seeds ``seed``, ``seed + 1``, ...)."""
    spec = HF_SPECS[name]
    return [spec.make_input(seed + i) for i in range(count)]
