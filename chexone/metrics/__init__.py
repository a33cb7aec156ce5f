"""Built-in evaluation metrics (registered by name in ``chexone.metrics``; see docs/metrics.md).

Every metric is a ``torchmetrics.Metric`` with ``update(preds, targets)`` / ``compute()`` and DDP-reducible states;
most also offer ``score(preds, refs) -> list[float]`` per sample. Model-backed metrics take local paths for all their
weights and fail fast offline. Submodules are imported lazily (``from chexone.metrics import RadCliQScorer`` works
without importing the others).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BLEU2": "text", "bleu2": "text", "bleu2_tokenize": "text", "sentence_bleu": "text",
    "BERTScore": "bertscore", "BERTScoreScorer": "bertscore",
    "SembScore": "semb", "SembScorer": "semb",
    "RadGraphF1": "radgraph", "RadGraphScorer": "radgraph", "RadGraphAnnotator": "radgraph",
    "RadCliQ": "radcliq", "RadCliQScorer": "radcliq", "radcliq_v1": "radcliq",
    "RaTEScore": "ratescore", "RaTEScorer": "ratescore",
    "Accuracy": "classification", "ExactMatch": "classification",
    "GroundingIoU": "grounding", "GroundingMAP": "grounding", "box_iou": "grounding",
    "Factuality": "reasoning", "SelfConsistency": "reasoning", "self_consistency": "reasoning",
    "bootstrap_ci": "stats", "mcnemar": "stats", "paired_ttest": "stats", "wilcoxon_signed_rank": "stats",
    "MissingWeightsError": "_common", "MissingExtraError": "_common", "PerSampleMetric": "_common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chexone.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"chexone.metrics.{module}"), name)
