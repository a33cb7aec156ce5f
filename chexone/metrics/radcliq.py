"""RadCliQ-v1 (lower is better) from BLEU-2, BERTScore, SembScore and RadGraph, per sample, batched and cached.

RadCliQ-v1 = Σ cᵢ·(xᵢ − meanᵢ)/scaleᵢ + b over x = [radgraph_combined, bertscore, semb_score, bleu] with the constants
of CXR-Report-Metric's ``radcliq-v1.pkl`` (docs/method.md §6). Golden values: all features 1 -> −1.4406903, all 0 ->
2.4501431. The corpus score is reported as ``1/mean(RadCliQ)`` (the paper's "1/RadCliQ"); per sample, 1/x is not
monotone across 0, so rewards use a monotone map (``chexone.rewards.builtin.report_reward``).

:class:`RadCliQScorer` is the per-sample API the GRPO report reward calls: ``score(preds, refs) -> list[float]``,
with an LRU cache keyed by (prediction, reference) so repeated group members are not rescored, and per-text caches
inside the component scorers (CheXbert embeddings, RadGraph annotations) so a reference shared by a group is encoded
once. All four components are computed for the uncached pairs of a call in one batch each.

Settings (flat keys, usable as ``metric_kwargs`` of the report reward and in recipes):
``bertscore_model`` (default ``distilroberta-base``), ``bertscore_num_layers`` (5), ``bertscore_baseline_path``,
``chexbert_path``, ``chexbert_bert_model`` (``bert-base-uncased``), ``radgraph_model_dir``,
``radgraph_backbone_path``, ``radgraph_model_type`` (``radgraph``), ``device``, ``batch_size``, ``cache_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from chexone.metrics._common import ColumnMeanMetric, LRUCache, cached_batch, check_pairs
from chexone.metrics.text import bleu2

__all__ = [
    "RADCLIQ_FEATURES",
    "RADCLIQ_V1_COEF",
    "RADCLIQ_V1_INTERCEPT",
    "RADCLIQ_V1_MEAN",
    "RADCLIQ_V1_SCALE",
    "RadCliQ",
    "RadCliQScorer",
    "radcliq_v1",
]

RADCLIQ_FEATURES = ("radgraph_combined", "bertscore", "semb_score", "bleu")
RADCLIQ_V1_MEAN = np.array([0.5379231241, 0.6175725628, 0.7647942121, 0.4473833540])
RADCLIQ_V1_SCALE = np.array([0.3028258411, 0.2243093846, 0.2539439110, 0.2989271671])
RADCLIQ_V1_COEF = np.array([-0.377083683, -0.370300100, -0.252616218, 4.315e-12])
RADCLIQ_V1_INTERCEPT = 2.4666e-10
#: Columns of the per-sample state: the four features, then RadCliQ-v1.
RADCLIQ_COLUMNS = RADCLIQ_FEATURES + ("radcliq",)


def radcliq_v1(radgraph_combined: Any, bertscore: Any, semb_score: Any, bleu: Any) -> Any:
    """RadCliQ-v1 of scalars or arrays (broadcast); float for scalars."""
    x = np.stack(np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                       for v in (radgraph_combined, bertscore, semb_score, bleu))), axis=-1)
    out = ((x - RADCLIQ_V1_MEAN) / RADCLIQ_V1_SCALE) @ RADCLIQ_V1_COEF + RADCLIQ_V1_INTERCEPT
    return float(out) if np.ndim(out) == 0 else out


class RadCliQScorer:
    """Per-sample RadCliQ-v1 for the GRPO report reward and the RadCliQ metric.

    ``score(preds, refs) -> list[float]`` (lower is better), ``score_components(preds, refs) -> list[dict]`` (the four
    features and ``radcliq``). Component scorers are built from the flat settings (see module docstring) or passed in
    (``bertscore_scorer=``, ``semb_scorer=``, ``radgraph_scorer=``: anything with ``score(preds, refs)``).
    Model weights are shared between scorers with the same settings in one process.
    """

    higher_is_better = False
    lower_is_better = True

    def __init__(self, *, bertscore_model: str = "distilroberta-base", bertscore_num_layers: int = 5,
                 bertscore_baseline_path: str | None = None, chexbert_path: str | None = None,
                 chexbert_bert_model: str = "bert-base-uncased", radgraph_model_dir: str | None = None,
                 radgraph_backbone_path: str | None = None, radgraph_model_type: str = "radgraph",
                 device: str | None = None, batch_size: int = 32, cache_size: int = 65536,
                 bertscore_scorer: Any = None, semb_scorer: Any = None, radgraph_scorer: Any = None):
        if bertscore_scorer is None:
            from chexone.metrics.bertscore import BERTScoreScorer

            bertscore_scorer = BERTScoreScorer(
                bertscore_model, bertscore_num_layers, baseline_path=bertscore_baseline_path, device=device,
                batch_size=batch_size, cache_size=0,
                key_names={"model_name_or_path": "bertscore_model", "num_layers": "bertscore_num_layers",
                           "baseline_path": "bertscore_baseline_path"})
        if semb_scorer is None:
            from chexone.metrics.semb import SembScorer

            semb_scorer = SembScorer(chexbert_path, chexbert_bert_model, batch_size=batch_size, device=device,
                                     key_names={"chexbert_path": "chexbert_path",
                                                "bert_model": "chexbert_bert_model"})
        if radgraph_scorer is None:
            from chexone.metrics.radgraph import RadGraphScorer

            radgraph_scorer = RadGraphScorer(
                radgraph_model_type, radgraph_model_dir, radgraph_backbone_path, device=device,
                key_names={"radgraph_model_dir": "radgraph_model_dir", "backbone_path": "radgraph_backbone_path"})
        self.bertscore = bertscore_scorer
        self.semb = semb_scorer
        self.radgraph = radgraph_scorer
        self._cache = LRUCache(cache_size)
        #: number of (pred, ref) pairs actually scored by the models (cache misses), for tests and logging
        self.pairs_scored = 0

    def _uncached(self, pairs: list[tuple[str, str]]) -> list[dict[str, float]]:
        preds = [p for p, _ in pairs]
        refs = [r for _, r in pairs]
        self.pairs_scored += len(pairs)
        rg = self.radgraph.score(preds, refs)
        bs = self.bertscore.score(preds, refs)
        se = self.semb.score(preds, refs)
        bl = [bleu2(p, r) for p, r in pairs]
        q = radcliq_v1(np.array(rg), np.array(bs), np.array(se), np.array(bl))
        return [
            {"radgraph_combined": float(a), "bertscore": float(b), "semb_score": float(c), "bleu": float(d),
             "radcliq": float(e)}
            for a, b, c, d, e in zip(rg, bs, se, bl, np.atleast_1d(q))
        ]

    def score_components(self, preds: Sequence[str], refs: Sequence[str]) -> list[dict[str, float]]:
        check_pairs(preds, refs)
        return cached_batch(self._cache, [(str(p), str(r)) for p, r in zip(preds, refs)], self._uncached)

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        """Per-sample RadCliQ-v1 (lower is better)."""
        return [c["radcliq"] for c in self.score_components(preds, refs)]

    __call__ = score

    @property
    def cache_info(self) -> dict[str, int]:
        return {"hits": self._cache.hits, "misses": self._cache.misses, "size": len(self._cache)}


class RadCliQ(ColumnMeanMetric):
    """Corpus RadCliQ-v1: ``compute()`` -> dict with ``inv_radcliq`` (= 1/mean RadCliQ, the paper's 1/RadCliQ;
    primary), ``radcliq`` (mean) and the four feature means. Settings as :class:`RadCliQScorer`.

    Also ``score(preds, refs) -> list[float]`` per sample (lower is better), which the report reward uses.
    """

    higher_is_better = True  # for the primary value 1/mean(RadCliQ)
    lower_is_better = True  # for the per-sample scores of score()
    primary = "inv_radcliq"
    columns = tuple(RADCLIQ_COLUMNS)

    @staticmethod
    def corpus_statistic(values: Any, axis: int = -1) -> Any:
        """The corpus value from per-sample RadCliQ (what ``score`` returns): 1/mean, as ``inv_radcliq``."""
        return 1.0 / np.mean(values, axis=axis)

    def __init__(self, *, scorer: RadCliQScorer | None = None, **settings: Any):
        metric_kwargs = {k: settings.pop(k) for k in list(settings)
                         if k in ("compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn",
                                  "distributed_available_fn", "sync_on_compute", "compute_with_cache")}
        super().__init__(**metric_kwargs)
        self.scorer = scorer or RadCliQScorer(**settings)

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        return self.scorer.score(preds, refs)

    def _rows(self, preds: list[str], targets: list[str]) -> list[dict[str, float]]:
        return self.scorer.score_components(preds, targets)

    def compute(self) -> dict[str, torch.Tensor]:
        out = super().compute()
        out["inv_radcliq"] = 1.0 / out["radcliq"]
        return out

    def per_sample(self, key: str | None = None) -> torch.Tensor:
        return super().per_sample(key or "radcliq")
