"""BLEU-2 (ReXRank) against NLTK, and the per-sample metric base (merge, DDP-style sync)."""

from __future__ import annotations

import random

import pytest
import torch

from chexone.metrics.testing import simulated_ranks
from chexone.metrics.text import BLEU2, bleu2, bleu2_tokenize, sentence_bleu

try:
    from nltk.translate import bleu_score as nltk_bleu
except ImportError:  # optional: the NLTK comparisons skip
    nltk_bleu = None
needs_nltk = pytest.mark.skipif(nltk_bleu is None, reason="nltk not installed")

WORDS = ["the", "heart", "size", "is", "normal", "no", "pleural", "effusion", "mild", "cardiomegaly", "left", "lung", ".", ",", "clear"]


def nltk_bleu2(pred: str, ref: str) -> float:
    """ReXRank's computation written with NLTK (the reference implementation)."""
    def toks(t):
        return [x for x in t.lower().replace(".", " .").split(" ") if x != ""]

    hyp, refs = toks(pred), [toks(ref)]
    return float(nltk_bleu.sentence_bleu(refs, hyp, weights=(0.5, 0.5),
                                         smoothing_function=nltk_bleu.SmoothingFunction().method1))


def test_tokenisation_matches_rexrank():
    assert bleu2_tokenize("The heart.  Normal.\nNo effusion") == ["the", "heart", ".", "normal", ".\nno", "effusion"]
    assert bleu2_tokenize("") == []
    assert bleu2_tokenize(" . ") == ["."]


@needs_nltk
@pytest.mark.parametrize(
    "pred,ref",
    [
        ("the heart size is normal.", "the heart size is normal."),
        ("heart normal", "the heart size is normal."),  # brevity penalty, bigram smoothing
        ("effusion", "no pleural effusion."),  # one token: no bigram at all -> epsilon/1
        ("cardiomegaly mild", "mild cardiomegaly"),  # unigram matches, zero bigram matches
        ("xyz abc", "the heart"),  # no unigram match -> 0
        ("", "the heart"),  # empty prediction
        ("the heart", ""),  # empty reference
        ("the the the the", "the heart"),  # clipping
        ("the heart size is normal and the lungs are clear.", "normal heart"),  # longer than reference
    ],
)
def test_bleu2_equals_nltk_on_edge_cases(pred, ref):
    assert bleu2(pred, ref) == pytest.approx(nltk_bleu2(pred, ref), abs=1e-12)


@needs_nltk
def test_bleu2_equals_nltk_on_random_reports():
    rng = random.Random(0)
    for _ in range(300):
        pred = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 14)))
        ref = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))
        assert bleu2(pred, ref) == pytest.approx(nltk_bleu2(pred, ref), abs=1e-12), (pred, ref)


def test_bleu_differs_from_unsmoothed_when_no_bigram_matches():
    # method1 keeps a non-zero score where plain BLEU (and torchmetrics' BLEUScore) gives 0
    assert sentence_bleu(["mild", "cardiomegaly"], ["cardiomegaly", "mild"]) > 0
    assert sentence_bleu(["a", "b"], ["a", "b"], weights=(0.5, 0.5)) == pytest.approx(1.0)


def test_metric_mean_merge_and_ddp_sync():
    rng = random.Random(1)
    pairs = [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10))),
              " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10)))) for _ in range(20)]
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    expected = [sentence_bleu(bleu2_tokenize(p), bleu2_tokenize(r)) for p, r in pairs]

    full = BLEU2()
    full.update(preds, refs)
    assert float(full.compute()) == pytest.approx(sum(expected) / len(expected), abs=1e-12)
    assert full.per_sample().tolist() == pytest.approx(expected, abs=1e-12)
    assert full.score(preds[:3], refs[:3]) == pytest.approx(expected[:3], abs=1e-12)

    a, b = BLEU2(), BLEU2()
    a.update(preds[:7], refs[:7])
    b.update(preds[7:], refs[7:])
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(float(full.compute()), abs=1e-12)
    assert sorted(a.per_sample().tolist()) == pytest.approx(sorted(expected), abs=1e-12)

    r0, r1 = simulated_ranks(lambda **kw: BLEU2(**kw), 2)
    r0.update(preds[:12], refs[:12])
    r1.update(preds[12:], refs[12:])
    assert float(r0.compute()) == pytest.approx(float(full.compute()), abs=1e-12)
    assert float(r1.compute()) == pytest.approx(float(full.compute()), abs=1e-12)
    assert int(r0.count) == 12  # unsynced back to the local state after compute


def test_empty_metric_is_nan_and_length_mismatch_raises():
    m = BLEU2()
    assert torch.isnan(m.compute())
    with pytest.raises(ValueError):
        m.update(["a"], ["a", "b"])
    with pytest.raises(TypeError):
        m.update("a", "a")

