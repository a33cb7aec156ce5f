"""SembScore: cosine similarity of CheXbert [CLS] embeddings of prediction and reference (RadCliQ's ``semb_score``).

CheXbert = ``bert-base-uncased`` + 14 linear heads, fine-tuned as a report labeler; its checkpoint ``chexbert.pth`` holds
``{"model_state_dict": {"module.bert.*": ..., "module.linear_heads.*": ...}}`` (saved from ``nn.DataParallel``).
``f1chexbert`` has no embedding API, so the checkpoint is loaded here, strictly: every key must match the module
(the only tolerance: a stale ``bert.embeddings.position_ids`` buffer written by old transformers versions).

Text processing follows CXR-Report-Metric's ``encode.py``: strip, newlines -> spaces, collapse whitespace, WordPiece
tokenise, ``[CLS] ids [SEP]`` (cut to 512 as ``ids[:511] + [SEP]``; an empty report is ``[CLS] [SEP]``), pad with 0,
take the last layer's [CLS] vector (no dropout), and score ``a·b / (|a| |b|)`` in float32.

Weights: ``chexbert_path`` (default: ``chexbert.pth`` of hub repo ``StanfordAIMI/RRG_scorers``, the file f1chexbert
downloads) and ``bert_model`` (config + tokenizer of ``bert-base-uncased``; its weights are not needed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from chexone.metrics._common import (
    TOKENIZER_FILES,
    LRUCache,
    PerSampleMetric,
    cached_batch,
    resolve_hub_file,
    resolve_pretrained,
)

__all__ = ["CheXbertEncoder", "SembScore", "SembScorer", "load_chexbert", "preprocess_report"]

CHEXBERT_REPO = "StanfordAIMI/RRG_scorers"
CHEXBERT_FILE = "chexbert.pth"
MAX_LEN = 512
_WS = re.compile(r"\s+")


class CheXbertEncoder(nn.Module):
    """CheXbert's module layout (``bert`` + ``linear_heads``); ``forward`` returns the [CLS] embedding."""

    def __init__(self, config: Any):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config)  # with pooler, as in the checkpoint
        hidden = config.hidden_size
        self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4, bias=True) for _ in range(13)])
        self.linear_heads.append(nn.Linear(hidden, 2, bias=True))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask=attention_mask)[0]
        return hidden[:, 0, :]


def load_chexbert(chexbert_path: str, bert_model: str, *, device: str | torch.device = "cpu") -> CheXbertEncoder:
    """Build the encoder from ``bert_model``'s config and load ``chexbert_path`` strictly (``module.`` prefix
    removed). Raises ``RuntimeError`` listing missing/unexpected keys when the checkpoint does not fit."""
    from transformers import BertConfig

    config = BertConfig.from_pretrained(bert_model)
    model = CheXbertEncoder(config)
    ckpt = torch.load(chexbert_path, map_location="cpu", weights_only=True)
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise RuntimeError(f"{chexbert_path}: expected a dict with 'model_state_dict', got {type(ckpt).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.endswith("embeddings.position_ids") and k not in own)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise RuntimeError(
            f"{chexbert_path} does not fit a CheXbert on {bert_model!r}: missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


@lru_cache(maxsize=4)
def _cached_model(chexbert_path: str, bert_model: str, device: str) -> tuple[CheXbertEncoder, Any]:
    from transformers import AutoTokenizer

    model = load_chexbert(chexbert_path, bert_model, device=device)
    tokenizer = AutoTokenizer.from_pretrained(bert_model)
    return model, tokenizer


def preprocess_report(text: str) -> str:
    """CXR-Report-Metric's report clean-up before CheXbert: strip, newlines to spaces, collapse whitespace."""
    return _WS.sub(" ", str(text).strip()).strip()


class SembScorer:
    """Per-sample SembScore with an embedding cache per text (references repeat across GRPO group members).

    Args:
        chexbert_path: local ``chexbert.pth``; None = the hub file (cache only when ``HF_HUB_OFFLINE=1``).
        bert_model: ``bert-base-uncased`` or a local directory with its ``config.json`` and tokenizer files.
        batch_size: texts per forward pass.
        device: torch device (default: cuda if available, else cpu).
        cache_size: texts whose embeddings are kept (0 disables).
    """

    higher_is_better = True
    lower_is_better = False

    def __init__(self, chexbert_path: str | None = None, bert_model: str = "bert-base-uncased", *,
                 batch_size: int = 32, device: str | None = None, cache_size: int = 16384,
                 key_names: dict[str, str] | None = None):
        keys = {"chexbert_path": "chexbert_path", "bert_model": "bert_model", **(key_names or {})}
        self.chexbert_path = resolve_hub_file(chexbert_path, repo_id=CHEXBERT_REPO, filename=CHEXBERT_FILE,
                                              key=keys["chexbert_path"], what="SembScore (CheXbert weights)")
        self.bert_model = resolve_pretrained(bert_model, key=keys["bert_model"],
                                             what="SembScore (bert-base-uncased config/tokenizer)",
                                             need=(("config.json",), TOKENIZER_FILES))
        self.batch_size = int(batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._cache = LRUCache(cache_size)

    def _model(self) -> tuple[CheXbertEncoder, Any]:
        return _cached_model(self.chexbert_path, self.bert_model, str(self.device))

    def encode_ids(self, text: str, tokenizer: Any) -> list[int]:
        tokens = tokenizer.tokenize(preprocess_report(text))
        if not tokens:
            return [tokenizer.cls_token_id, tokenizer.sep_token_id]
        ids = [tokenizer.cls_token_id] + tokenizer.convert_tokens_to_ids(tokens) + [tokenizer.sep_token_id]
        if len(ids) > MAX_LEN:
            ids = ids[: MAX_LEN - 1] + [tokenizer.sep_token_id]
        return ids

    @torch.no_grad()
    def _embed_uncached(self, texts: list[str]) -> list[torch.Tensor]:
        model, tokenizer = self._model()
        seqs = [self.encode_ids(t, tokenizer) for t in texts]
        out: list[torch.Tensor] = []
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i : i + self.batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.float)
            for j, s in enumerate(chunk):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            emb = model(ids.to(self.device), mask.to(self.device)).float().cpu()
            out.extend(emb.unbind(0))
        return out

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """[CLS] embeddings (float32, one row per text)."""
        rows = cached_batch(self._cache, list(texts), self._embed_uncached)
        return torch.stack(rows) if rows else torch.zeros(0)

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        if not preds:
            return []
        emb = self.embed(list(preds) + list(refs))
        a, b = emb[: len(preds)], emb[len(preds):]
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        return [float(x) for x in cos]


class SembScore(PerSampleMetric):
    """Mean per-sample SembScore. Settings as :class:`SembScorer` (``chexbert_path``, ``bert_model``, ...)."""

    higher_is_better = True

    def __init__(self, chexbert_path: str | None = None, bert_model: str = "bert-base-uncased", *,
                 batch_size: int = 32, device: str | None = None, cache_size: int = 16384, **kwargs: Any):
        super().__init__(**kwargs)
        self.scorer = SembScorer(chexbert_path, bert_model, batch_size=batch_size, device=device,
                                 cache_size=cache_size)

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        return self.scorer.score(preds, refs)

    def _score(self, preds, targets):
        return self.scorer.score(preds, targets)
