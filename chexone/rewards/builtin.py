"""CheXOne's GRPO rewards (docs/method.md §3), registered by name in ``chexone.rewards``.

Interface (same as plugins): ``reward(responses, samples, **kwargs) -> list[float | None]`` — one value per response,
``None`` for samples whose task family the reward does not own. ``boxed`` ("first" | "last") says which ``\\boxed{}``
holds the answer when a response has several (only malformed responses do; the format reward gives those 0).
"""

from __future__ import annotations

import math
import string
from functools import lru_cache
from typing import Any, Sequence

from chexone.data.sample import Sample
from chexone.tasks import get_task
from chexone.tasks.answers import BOXED, box_iou, extract_boxed, find_boxed, parse_boxes, parse_option_letters

_TRAILING_OK = set(string.whitespace + string.punctuation)


def _family(sample: Sample) -> str:
    return get_task(sample.task).family


def _check(responses: Sequence[str], samples: Sequence[Sample]) -> None:
    if len(responses) != len(samples):
        raise ValueError(f"got {len(responses)} responses for {len(samples)} samples")


# ----------------------------------------------------------------------------------------------------- format


def is_reasoning_then_one_box(response: str) -> bool:
    """Reasoning text, then exactly one non-empty ``\\boxed{answer}`` (only whitespace/punctuation may follow)."""
    boxes = find_boxed(response)
    if len(boxes) != 1 or response.count(BOXED) != 1 or not boxes[0].strip():
        return False
    start = response.find(BOXED)
    end = start + len(BOXED) + len(boxes[0]) + 1
    reasoning, tail = response[:start], response[end:]
    return bool(reasoning.strip()) and all(c in _TRAILING_OK for c in tail)


def format_reward(responses: Sequence[str], samples: Sequence[Sample], **_: Any) -> list[float | None]:
    """1.0 when the response is reasoning followed by exactly one non-empty ``\\boxed{}``, else 0.0 (every task)."""
    _check(responses, samples)
    return [1.0 if is_reasoning_then_one_box(r) else 0.0 for r in responses]


def has_reasoning(response: str) -> bool:
    """Non-empty text before the first ``\\boxed{`` (a response without a box has no separate reasoning)."""
    start = response.find(BOXED)
    return start > 0 and bool(response[:start].strip())


# ----------------------------------------------------------------------------------------------------- VQA


def option_jaccard(pred: str | None, truth: str) -> float:
    """|pred ∩ truth| / |pred ∪ truth| over option letters; 0 when nothing could be parsed."""
    if pred is None:
        return 0.0
    p, t = parse_option_letters(pred), parse_option_letters(truth)
    if not p or not t:
        return 0.0
    return len(p & t) / len(p | t)


def vqa_reward(responses: Sequence[str], samples: Sequence[Sample], *, boxed: str = "last",
               **_: Any) -> list[float | None]:
    """Option-set Jaccard of the boxed answer with the ground truth (multiple-choice tasks only; 0 when no box)."""
    _check(responses, samples)
    return [option_jaccard(extract_boxed(r, boxed), s.answer) if _family(s) == "multiple_choice" else None
            for r, s in zip(responses, samples)]


def vqa_strict_reward(responses: Sequence[str], samples: Sequence[Sample], *, boxed: str = "last",
                      **_: Any) -> list[float | None]:
    """1.0 only when the boxed option set equals the ground-truth set (multiple-choice tasks only)."""
    _check(responses, samples)
    return [float(option_jaccard(extract_boxed(r, boxed), s.answer) == 1.0) if _family(s) == "multiple_choice"
            else None for r, s in zip(responses, samples)]


# ----------------------------------------------------------------------------------------------------- grounding


def grounding_iou_reward(responses: Sequence[str], samples: Sequence[Sample], *, boxed: str = "last",
                         name_penalty: float = 0.95, **_: Any) -> list[float | None]:
    """IoU of the first predicted box with the first ground-truth box, × ``name_penalty`` when the ref names differ.

    0 on parse failure (no box, coordinates outside 0-99, text instead of numbers) and when the ground truth has no
    box (a negative sample), as in the reference implementation. Grounding tasks only. In reasoning mode the boxed
    answer is parsed; without a box the whole response is.
    """
    _check(responses, samples)
    out: list[float | None] = []
    for r, s in zip(responses, samples):
        if _family(s) != "grounding":
            out.append(None)
            continue
        truth = parse_boxes(s.answer)
        answer = extract_boxed(r, boxed)
        pred = parse_boxes(answer if answer is not None else r)
        if not truth or not pred:
            out.append(0.0)
            continue
        iou = box_iou(pred[0].coords, truth[0].coords)
        same = pred[0].name.strip().lower() == truth[0].name.strip().lower()
        out.append(iou if same else iou * name_penalty)
    return out


# ----------------------------------------------------------------------------------------------------- report

REPORT_MAPPINGS = ("sigmoid", "reference")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@lru_cache(maxsize=8)
def _scorer(metric: str, kwargs_key: tuple) -> Any:
    """One scorer instance per (metric, settings): model-backed scorers load their weights once."""
    from chexone.registry import METRICS

    obj = METRICS.get(metric)
    scorer = obj if hasattr(obj, "score") and not isinstance(obj, type) else obj(**dict(kwargs_key))
    if not hasattr(scorer, "score"):
        raise TypeError(f"metric {metric!r} has no per-sample score(preds, refs) method; it cannot drive a reward")
    return scorer


def report_reward(responses: Sequence[str], samples: Sequence[Sample], *, boxed: str = "last",
                  metric: str = "radcliq", mapping: str = "sigmoid", metric_kwargs: dict | None = None,
                  no_reasoning_penalty: float = 0.95, **_: Any) -> list[float | None]:
    """Report-generation reward from a per-sample report metric (report tasks only).

    The metric (registry ``chexone.metrics``, e.g. ``radcliq``) must offer ``score(preds, refs) -> list[float]`` and a
    ``lower_is_better`` flag. For lower-is-better scores q (RadCliQ-v1) the reward is the monotone ``sigmoid(-q)`` in
    (0, 1) (``mapping=sigmoid``), or the reference code's ``2*sigmoid(-q)`` in (0, 2) × ``no_reasoning_penalty`` when
    the response has no reasoning before the box (``mapping=reference``). Per-sample 1/q is never used: it is not
    monotone across 0. Higher-is-better scores in [0, 1] are used as they are. The prediction is the boxed answer (or
    the whole response when there is no box: 0 reward in reasoning mode would hide all signal early in training).
    """
    _check(responses, samples)
    if mapping not in REPORT_MAPPINGS:
        raise ValueError(f"report reward mapping={mapping!r}; choose one of {REPORT_MAPPINGS}")
    idx = [i for i, s in enumerate(samples) if _family(s) == "report"]
    out: list[float | None] = [None] * len(samples)
    if not idx:
        return out
    scorer = _scorer(metric, tuple(sorted((metric_kwargs or {}).items())))
    preds, refs = [], []
    for i in idx:
        answer = extract_boxed(responses[i], boxed)
        preds.append(answer if answer is not None else responses[i])
        refs.append(samples[i].answer)
    scores = scorer.score(preds, refs)
    lower_is_better = bool(getattr(scorer, "lower_is_better", False))
    for i, q in zip(idx, scores):
        if not lower_is_better:
            out[i] = float(q)
        elif mapping == "sigmoid":
            out[i] = sigmoid(-q)
        else:
            value = 2.0 * sigmoid(-q)
            out[i] = value if has_reasoning(responses[i]) else value * no_reasoning_penalty
    return out
