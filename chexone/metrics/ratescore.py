"""RaTEScore through the optional ``RaTEScore`` package (``pip install 'chexone[ratescore]'``).

The package builds ``RaTEScore(bert_model=..., eval_model=...)``: an NER model (default
``Angelakeke/RaTE-NER-Deberta``) and a synonym encoder (default ``FremyCompany/BioLORD-2023-C``), loaded with
``from_pretrained``; pass local directories for offline use. It runs medspacy at import and needs spacy (numpy < 2):
install it in an environment where those resolve. Per-sample scores are the package's ``compute_score`` values
(0.5 when either text has no entity, as the package defines).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch

from chexone.metrics._common import (
    TOKENIZER_FILES,
    WEIGHT_FILES,
    LRUCache,
    PerSampleMetric,
    cached_batch,
    require_package,
    resolve_pretrained,
)

__all__ = ["RaTEScore", "RaTEScorer"]


@lru_cache(maxsize=2)
def _cached(ner_model: str, eval_model: str, batch_size: int, use_gpu: bool, affinity_matrix: str) -> Any:
    pkg = require_package("RaTEScore", extra="ratescore", feature="RaTEScore")
    return pkg.RaTEScore(bert_model=ner_model, eval_model=eval_model, batch_size=batch_size, use_gpu=use_gpu,
                         affinity_matrix=affinity_matrix)


class RaTEScorer:
    """Per-sample RaTEScore, cached by (prediction, reference).

    Args:
        ner_model: RaTE-NER model (hub id or local directory) — key ``ner_model``.
        eval_model: BioLORD encoder (hub id or local directory) — key ``eval_model``.
        affinity_matrix: "long" (package default), "short", or a JSON file.
    """

    higher_is_better = True
    lower_is_better = False

    def __init__(self, ner_model: str = "Angelakeke/RaTE-NER-Deberta",
                 eval_model: str = "FremyCompany/BioLORD-2023-C", *, affinity_matrix: str = "long",
                 batch_size: int = 8, device: str | None = None, cache_size: int = 65536):
        if importlib.util.find_spec("RaTEScore") is None:
            require_package("RaTEScore", extra="ratescore", feature="RaTEScore")
        need = (("config.json",), WEIGHT_FILES, TOKENIZER_FILES)
        self.ner_model = resolve_pretrained(ner_model, key="ner_model", what="RaTEScore NER model", need=need)
        self.eval_model = resolve_pretrained(eval_model, key="eval_model", what="RaTEScore encoder", need=need)
        self.affinity_matrix = affinity_matrix
        self.batch_size = int(batch_size)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.use_gpu = str(device).startswith("cuda")
        self._cache = LRUCache(cache_size)

    def _uncached(self, pairs: list[tuple[str, str]]) -> list[float]:
        scorer = _cached(self.ner_model, self.eval_model, self.batch_size, self.use_gpu, self.affinity_matrix)
        return [float(x) for x in scorer.compute_score([p for p, _ in pairs], [r for _, r in pairs])]

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        return cached_batch(self._cache, [(str(p), str(r)) for p, r in zip(preds, refs)], self._uncached)


class RaTEScore(PerSampleMetric):
    """Mean per-sample RaTEScore (optional extra). Settings as :class:`RaTEScorer`."""

    higher_is_better = True

    def __init__(self, ner_model: str = "Angelakeke/RaTE-NER-Deberta",
                 eval_model: str = "FremyCompany/BioLORD-2023-C", *, affinity_matrix: str = "long",
                 batch_size: int = 8, device: str | None = None, cache_size: int = 65536, **kwargs: Any):
        super().__init__(**kwargs)
        self.scorer = RaTEScorer(ner_model, eval_model, affinity_matrix=affinity_matrix, batch_size=batch_size,
                                 device=device, cache_size=cache_size)

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        return self.scorer.score(preds, refs)

    def _score(self, preds, targets):
        return self.scorer.score(preds, targets)
