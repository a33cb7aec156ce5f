"""Accuracy of multiple-choice answers (and per-option confusion), and exact match of open answers.

Answers are compared in the form the task parses them to (``Task.parse_answer``): option-letter sets for the
multiple-choice tasks (``close_vqa``, ``view_classification``, ...; letters parsed by
``chexone.tasks.answers.parse_option_letters``), normalised text for ``open_vqa``. ``update(preds, targets)`` takes
final answers (the boxed content in reasoning mode); a prediction that parses to nothing is wrong.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from chexone.metrics._common import PerSampleMetric, check_pairs

__all__ = ["LETTERS", "Accuracy", "ExactMatch", "confusion_index"]

LETTERS = string.ascii_uppercase
#: Confusion-matrix index for "no single option" (nothing parsed, or several letters).
OTHER = len(LETTERS)


def _task_parser(task: str) -> Callable[[str], Any]:
    from chexone.tasks import get_task

    return get_task(task).parse_answer


def confusion_index(letters: Any) -> int:
    """Row/column of a parsed answer in the confusion matrix: 0-25 for a single letter A-Z, 26 otherwise."""
    if isinstance(letters, (set, frozenset)) and len(letters) == 1:
        (x,) = tuple(letters)
        if isinstance(x, str) and len(x) == 1 and x in LETTERS:
            return LETTERS.index(x)
    return OTHER


class Accuracy(Metric):
    """Multiple-choice accuracy: the predicted option set equals the true one.

    ``compute()`` returns ``{"accuracy", "correct", "total", "confusion", "option_precision", "option_recall"}``:
    ``confusion[t, p]`` counts answers with true single option ``t`` and predicted ``p`` (index 26 = no single option:
    nothing parsed or several letters); ``option_precision/recall[k]`` are per-letter values over the letter sets
    (multi-answer questions count each letter; NaN where undefined).

    Args:
        task: the task whose ``parse_answer`` canonicalises answers (default ``close_vqa``: option-letter sets).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    primary = "accuracy"
    #: paired comparison of two models (python -m chexone.evaluate compare): correct/wrong per question
    paired_test = "mcnemar"

    def __init__(self, task: str = "close_vqa", **kwargs: Any):
        super().__init__(**kwargs)
        self.task = task
        self._parse = _task_parser(task)
        n = len(LETTERS) + 1
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("confusion", default=torch.zeros(n, n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("tp", default=torch.zeros(len(LETTERS), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("fp", default=torch.zeros(len(LETTERS), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("fn", default=torch.zeros(len(LETTERS), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def score(self, preds: Sequence[str | None], refs: Sequence[str]) -> list[float]:
        return [float(p is not None and self._parse(p) == self._parse(r)) for p, r in zip(preds, refs)]

    def update(self, preds: Sequence[str | None], targets: Sequence[str]) -> None:
        check_pairs(preds, targets)
        hits = []
        for p, t in zip(preds, targets):
            pp = self._parse(p) if p is not None else frozenset()
            tt = self._parse(t)
            ok = bool(pp) and pp == tt
            hits.append(float(ok))
            self.confusion[confusion_index(tt), confusion_index(pp)] += 1
            if isinstance(pp, (set, frozenset)) and isinstance(tt, (set, frozenset)):
                for k, letter in enumerate(LETTERS):
                    inp, intt = letter in pp, letter in tt
                    self.tp[k] += int(inp and intt)
                    self.fp[k] += int(inp and not intt)
                    self.fn[k] += int(intt and not inp)
        self.correct += int(sum(hits))
        self.total += len(hits)
        if hits:
            self.values.append(torch.tensor(hits, dtype=torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        total = int(self.total)
        acc = self.correct.double() / total if total else torch.tensor(float("nan"), dtype=torch.float64)
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        return {
            "accuracy": acc,
            "correct": self.correct.clone(),
            "total": self.total.clone(),
            "confusion": self.confusion.clone(),
            "option_precision": tp / (tp + fp),
            "option_recall": tp / (tp + fn),
        }

    def per_sample(self) -> torch.Tensor:
        from torchmetrics.utilities.data import dim_zero_cat

        if isinstance(self.values, torch.Tensor):
            return self.values
        return dim_zero_cat(self.values) if self.values else torch.zeros(0, dtype=torch.float64)


class ExactMatch(PerSampleMetric):
    """Fraction of answers equal to the reference after the task's ``parse_answer`` (default ``open_vqa``:
    lower-cased, '.' and ',' removed, whitespace collapsed)."""

    higher_is_better = True
    paired_test = "mcnemar"

    def __init__(self, task: str = "open_vqa", **kwargs: Any):
        super().__init__(**kwargs)
        self.task = task
        self._parse = _task_parser(task)

    def score(self, preds: Sequence[str | None], refs: Sequence[str]) -> list[float]:
        return [float(p is not None and self._parse(p) == self._parse(r)) for p, r in zip(preds, refs)]

    def _score(self, preds, targets):
        return self.score(preds, targets)
