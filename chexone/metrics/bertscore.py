"""BERTScore through the ``bert-score`` package, with ReXRank's settings by default (docs/method.md §6).

ReXRank / CXR-Report-Metric: ``BERTScorer(model_type="distilroberta-base", lang="en", rescale_with_baseline=True,
idf=False)`` — layer 5 (the package's default for that model), the baseline file shipped inside ``bert-score``
(``rescale_baseline/en/distilroberta-base.tsv``), runs of spaces collapsed (``re.sub(" +", " ", text)``) in both
predictions and references, F1 per pair. The CheXOne reward code used ``distilbert-base-uncased`` layer 5 instead:
set ``model_name_or_path`` / ``num_layers``.

Two adaptations for transformers 5 (applied to the scorer's own tokenizer instance only):

* RoBERTa/GPT-2 tokenizers: ``bert-score`` passes ``add_prefix_space=True`` to ``encode``, which transformers 5
  silently ignores; the tokenizer is reloaded with ``add_prefix_space=True`` so the first word is encoded as under
  transformers 4 (what ReXRank's numbers were computed with).
* Empty strings: ``bert-score`` calls ``tokenizer.build_inputs_with_special_tokens([])``, which transformers 5
  removed; the instance gets an equivalent (the special tokens the tokenizer adds around an empty text).

torchmetrics' ``BERTScore`` is not used: in 1.9 it gives wrong per-sample scores when a batch's predictions and
references sort differently by length.

Offline: a local ``model_name_or_path`` needs ``config.json``, weights and tokenizer files (with
``model_max_length``), an explicit ``num_layers`` (default 5), and a baseline: ``baseline_path``, or the shipped file
for the model's hub name (found for hub ids, and for a local directory named like its hub id, e.g.
``/models/distilroberta-base``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch

from chexone.metrics._common import (
    TOKENIZER_FILES,
    WEIGHT_FILES,
    LRUCache,
    MissingWeightsError,
    PerSampleMetric,
    cached_batch,
    require_package,
    resolve_pretrained,
)

__all__ = ["REXRANK_BERTSCORE", "BERTScore", "BERTScoreScorer", "shipped_baseline"]

#: ReXRank's BERTScore settings.
REXRANK_BERTSCORE = {"model_name_or_path": "distilroberta-base", "num_layers": 5, "rescale_with_baseline": True,
                     "idf": False, "lang": "en"}
_SPACES = re.compile(r" +")


def shipped_baseline(model_name: str, lang: str = "en") -> str | None:
    """Path of the rescale baseline that ``bert-score`` ships for ``model_name`` (a hub id), or None."""
    spec = importlib.util.find_spec("bert_score")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "rescale_baseline", lang, f"{model_name}.tsv")
    return path if os.path.isfile(path) else None


def _adapt_tokenizer(scorer: Any, model: str) -> None:
    """The two transformers-5 adaptations described in the module docstring, on ``scorer._tokenizer``."""
    from transformers import AutoTokenizer, GPT2Tokenizer, RobertaTokenizer

    tok = scorer._tokenizer
    if isinstance(tok, (GPT2Tokenizer, RobertaTokenizer)) and not getattr(tok, "add_prefix_space", False):
        tok = AutoTokenizer.from_pretrained(model, use_fast=scorer.use_fast_tokenizer, add_prefix_space=True)
        scorer._tokenizer = tok
    if not hasattr(tok, "build_inputs_with_special_tokens"):
        empty = list(tok("", add_special_tokens=True)["input_ids"])

        def build_inputs_with_special_tokens(token_ids_0: list[int], token_ids_1: list[int] | None = None):
            if token_ids_0 or token_ids_1:
                raise NotImplementedError("only the empty-text case used by bert-score is provided")
            return list(empty)

        object.__setattr__(tok, "build_inputs_with_special_tokens", build_inputs_with_special_tokens)


@lru_cache(maxsize=4)
def _cached_scorer(model: str, num_layers: int, device: str, use_fast: bool) -> Any:
    bert_score = require_package("bert_score", extra="metrics", feature="BERTScore")
    scorer = bert_score.BERTScorer(model_type=model, num_layers=num_layers, device=device, lang="en",
                                   use_fast_tokenizer=use_fast)
    _adapt_tokenizer(scorer, model)
    return scorer


class BERTScoreScorer:
    """Per-sample BERTScore F1 (rescaled with the baseline by default), cached by (prediction, reference).

    Args:
        model_name_or_path: hub id or local directory (default ``distilroberta-base``, ReXRank).
        num_layers: which layer's embeddings (default 5, ReXRank).
        rescale_with_baseline: rescale with a baseline file (ReXRank: True).
        baseline_path: the baseline ``.tsv``; default: the one ``bert-score`` ships for the model's name.
        idf: idf weighting (ReXRank: False); needs ``idf_sents`` (ReXRank used the references).
        lang: language of the shipped baseline.
        batch_size, device, cache_size: execution settings.
    """

    higher_is_better = True
    lower_is_better = False

    def __init__(self, model_name_or_path: str = "distilroberta-base", num_layers: int = 5, *,
                 rescale_with_baseline: bool = True, baseline_path: str | None = None, idf: bool = False,
                 idf_sents: Sequence[str] | None = None, lang: str = "en", batch_size: int = 64,
                 device: str | None = None, use_fast_tokenizer: bool = False, collapse_spaces: bool = True,
                 cache_size: int = 65536, key_names: dict[str, str] | None = None):
        keys = {"model_name_or_path": "model_name_or_path", "baseline_path": "baseline_path",
                "num_layers": "num_layers", **(key_names or {})}
        if importlib.util.find_spec("bert_score") is None:
            require_package("bert_score", extra="metrics", feature="BERTScore")
        self.model = resolve_pretrained(model_name_or_path, key=keys["model_name_or_path"], what="BERTScore model",
                                        need=(("config.json",), WEIGHT_FILES, TOKENIZER_FILES))
        if num_layers is None:
            raise ValueError(f"BERTScore: set `{keys['num_layers']}` (the layer to use; ReXRank: 5)")
        self.num_layers = int(num_layers)
        self.rescale_with_baseline = bool(rescale_with_baseline)
        self.baseline_path: str | None = None
        if self.rescale_with_baseline:
            if baseline_path:
                path = os.path.expanduser(str(baseline_path))
                if not os.path.isfile(path):
                    raise MissingWeightsError(f"BERTScore baseline: file {path!r} does not exist. Set "
                                              f"`{keys['baseline_path']}` to a baseline .tsv.")
                self.baseline_path = path
            else:
                name = str(model_name_or_path)
                self.baseline_path = shipped_baseline(name, lang) or (
                    shipped_baseline(os.path.basename(os.path.normpath(name)), lang)
                    if os.path.isdir(os.path.expanduser(name)) else None)
                if self.baseline_path is None:
                    raise MissingWeightsError(
                        f"BERTScore baseline: bert-score ships no rescale baseline for {name!r} (lang {lang!r}). Set "
                        f"`{keys['baseline_path']}` to a baseline .tsv (ReXRank's: bert_score/rescale_baseline/en/"
                        f"distilroberta-base.tsv), or `rescale_with_baseline=False`.")
        self.idf = bool(idf)
        if self.idf and not idf_sents:
            raise ValueError("BERTScore idf=True needs idf_sents (ReXRank computed idf on the references)")
        self.idf_sents = list(idf_sents or [])
        self.lang = lang
        self.batch_size = int(batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.use_fast_tokenizer = bool(use_fast_tokenizer)
        self.collapse_spaces = bool(collapse_spaces)
        self._cache = LRUCache(cache_size)
        self._idf_dict: Any = None
        self._baseline_vals: torch.Tensor | None = None

    def _scorer(self) -> Any:
        return _cached_scorer(self.model, self.num_layers, str(self.device), self.use_fast_tokenizer)

    def _baseline(self) -> torch.Tensor:
        """(P, R, F) baseline of layer ``num_layers``, read as bert-score reads it."""
        if self._baseline_vals is None:
            import pandas as pd

            row = pd.read_csv(self.baseline_path).iloc[self.num_layers].to_numpy()
            self._baseline_vals = torch.tensor(row[1:].astype("float64")).float()
        return self._baseline_vals

    def _clean(self, text: str) -> str:
        return _SPACES.sub(" ", str(text)) if self.collapse_spaces else str(text)

    def _prf_uncached(self, pairs: list[tuple[str, str]]) -> list[tuple[float, float, float]]:
        from collections import defaultdict

        from bert_score.utils import bert_cos_score_idf, get_idf_dict

        scorer = self._scorer()
        tok = scorer._tokenizer
        if self.idf:
            if self._idf_dict is None:
                self._idf_dict = get_idf_dict([self._clean(s) for s in self.idf_sents], tok, nthreads=0)
            idf_dict = self._idf_dict
        else:
            idf_dict = defaultdict(lambda: 1.0)
            idf_dict[tok.sep_token_id] = 0
            idf_dict[tok.cls_token_id] = 0
        cands = [self._clean(p) for p, _ in pairs]
        refs = [self._clean(r) for _, r in pairs]
        preds = bert_cos_score_idf(scorer._model, refs, cands, tok, idf_dict, verbose=False, device=self.device,
                                   batch_size=self.batch_size, all_layers=False).cpu()
        if self.rescale_with_baseline:
            base = self._baseline()
            preds = (preds - base) / (1 - base)
        return [tuple(float(x) for x in row) for row in preds]  # type: ignore[misc]

    def score_prf(self, preds: Sequence[str], refs: Sequence[str]) -> list[tuple[float, float, float]]:
        """(precision, recall, F1) per pair."""
        return cached_batch(self._cache, list(zip(preds, refs)), self._prf_uncached)

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        """F1 per pair (the value RadCliQ uses)."""
        return [f for _, _, f in self.score_prf(preds, refs)]


class BERTScore(PerSampleMetric):
    """Mean per-sample BERTScore F1. Settings as :class:`BERTScoreScorer` (ReXRank's by default)."""

    higher_is_better = True

    def __init__(self, model_name_or_path: str = "distilroberta-base", num_layers: int = 5, *,
                 rescale_with_baseline: bool = True, baseline_path: str | None = None, idf: bool = False,
                 idf_sents: Sequence[str] | None = None, lang: str = "en", batch_size: int = 64,
                 device: str | None = None, cache_size: int = 65536, **kwargs: Any):
        super().__init__(**kwargs)
        self.scorer = BERTScoreScorer(model_name_or_path, num_layers, rescale_with_baseline=rescale_with_baseline,
                                      baseline_path=baseline_path, idf=idf, idf_sents=idf_sents, lang=lang,
                                      batch_size=batch_size, device=device, cache_size=cache_size)

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        return self.scorer.score(preds, refs)

    def _score(self, preds, targets):
        return self.scorer.score(preds, targets)
