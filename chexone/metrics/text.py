"""BLEU-2 exactly as ReXRank / RadCliQ compute it (docs/method.md §6).

Per sample: tokens = ``text.lower().replace(".", " .").split(" ")`` without empty strings; BLEU with weights (½, ½),
one reference, and NLTK's smoothing ``method1`` (ε = 0.1 added to zero n-gram match counts). Equal to
``nltk.translate.bleu_score.sentence_bleu([ref], hyp, weights=(0.5, 0.5),
smoothing_function=SmoothingFunction().method1)`` (checked in tests); torchmetrics' ``BLEUScore`` differs (it gives
0 whenever an n-gram precision is 0). Pure Python, no dependency.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from chexone.metrics._common import PerSampleMetric

__all__ = ["BLEU2", "bleu2", "bleu2_tokenize", "sentence_bleu"]


def bleu2_tokenize(text: str) -> list[str]:
    """ReXRank's report tokenisation: lower-case, detach periods, split on single spaces, drop empty strings.

    Only the space character separates tokens (as in the reference code): newlines and tabs stay inside tokens.
    """
    return [t for t in str(text).lower().replace(".", " .").split(" ") if t != ""]


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(hypothesis: Sequence[str], reference: Sequence[str], *, weights: Sequence[float] = (0.5, 0.5),
                  epsilon: float = 0.1) -> float:
    """Sentence BLEU of token lists with one reference and NLTK ``method1`` smoothing.

    Follows NLTK 3.x: clipped n-gram precisions with denominators ``max(1, #hyp n-grams)``; 0 when no unigram
    matches; zero match counts replaced by ``epsilon``; brevity penalty ``exp(1 - r/c)`` for ``c <= r``.
    """
    hyp, ref = list(hypothesis), list(reference)
    precisions: list[float] = []
    for n in range(1, len(weights) + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        matches = sum(min(c, r[g]) for g, c in h.items())
        denom = max(1, sum(h.values()))
        if n == 1 and matches == 0:
            return 0.0
        precisions.append((matches + epsilon) / denom if matches == 0 else matches / denom)
    c, r_len = len(hyp), len(ref)
    if c > r_len:
        bp = 1.0
    elif c == 0:
        bp = 0.0
    else:
        bp = math.exp(1 - r_len / c)
    return bp * math.exp(math.fsum(w * math.log(p) for w, p in zip(weights, precisions) if p > 0))


def bleu2(prediction: str, reference: str) -> float:
    """Per-sample ReXRank BLEU-2 of two report strings."""
    return sentence_bleu(bleu2_tokenize(prediction), bleu2_tokenize(reference))


class BLEU2(PerSampleMetric):
    """Mean per-sample BLEU-2 (ReXRank settings). ``update(preds, targets)`` with report strings.

    Also usable per sample without state: ``BLEU2().score(preds, refs) -> list[float]``.
    """

    higher_is_better = True

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        return [bleu2(p, r) for p, r in zip(preds, refs)]

    def _score(self, preds, targets):
        return self.score(preds, targets)
