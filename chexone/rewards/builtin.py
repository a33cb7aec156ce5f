"""CheXOne's GRPO rewards (docs/method.md §3), registered by name in ``chexone.rewards``.

Interface (same as plugins): ``reward(responses, samples, **kwargs) -> list[float | None]`` — one value per response,
``None`` for samples whose task family the reward does not own. ``boxed`` ("first" | "last") says which ``\\boxed{}``
holds the answer when a response has several (only malformed responses do; the format reward gives those 0).

Every built-in reward takes ``semantics`` ("paper" | "reference", recipe ``kwargs``): ``paper`` (the default) is
chexone's reading of the method; ``reference`` reproduces the CheXOne reference reward code (public repository
YBZh/CheXOne, ``examples/train/grpo/plugin/plugin.py``) on every answer to the reward's own tasks, malformed ones
included. The differences are listed, with worked examples, in docs/grpo.md ("Paper and reference semantics").
"""

from __future__ import annotations

import math
import re
import string
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from chexone.data.sample import Sample
from chexone.tasks import get_task
from chexone.tasks.answers import BOXED, box_iou, extract_boxed, find_boxed, parse_boxes, parse_option_letters

_TRAILING_OK = set(string.whitespace + string.punctuation)


def _family(sample: Sample) -> str:
    return get_task(sample.task).family


def _check(responses: Sequence[str], samples: Sequence[Sample]) -> None:
    if len(responses) != len(samples):
        raise ValueError(f"got {len(responses)} responses for {len(samples)} samples")


SEMANTICS = ("paper", "reference")


def _reference_mode(reward: str, semantics: Any) -> bool:
    """True for ``semantics="reference"``, False for ``"paper"``; anything else is a ValueError naming the reward."""
    if not isinstance(semantics, str) or semantics not in SEMANTICS:
        raise ValueError(f"reward {reward!r}: semantics={semantics!r}; choose one of {', '.join(SEMANTICS)} "
                         "(paper = chexone's default, reference = the CheXOne reference reward code)")
    return semantics == "reference"


# ----------------------------------------------------------------------------------------------------- reference
# How the CheXOne reference reward code reads an answer (YBZh/CheXOne, examples/train/grpo/plugin/plugin.py),
# re-implemented from its observable behaviour. Used only with semantics="reference".

_REF_BOXED = re.compile(r"\\boxed\{([^}]*)\}")  # a box ends at the first "}" (no nesting)


def reference_split(response: str) -> tuple[str | None, str | None]:
    """``(reasoning, answer)`` as the reference reads a response, each stripped and None when empty.

    The answer is the content of the *first* ``\\boxed{`` up to the first ``}``; the reasoning is the text before that
    box (the whole response when there is no box). Text after the box is ignored.
    """
    m = _REF_BOXED.search(response)
    if m is None:
        return response.strip() or None, None
    return response[: m.start()].strip() or None, m.group(1).strip() or None


def reference_format_ok(response: str) -> bool:
    """Exactly one complete ``\\boxed{...}`` (up to the first ``}``), non-empty inside, non-empty text before it."""
    if len(_REF_BOXED.findall(response)) != 1:
        return False
    reasoning, answer = reference_split(response)
    return reasoning is not None and answer is not None


# Option rules of the reference, tried in order; the first that finds anything wins. An option is one ASCII letter
# or digit (case-sensitive) at a word boundary: "(x)", then x followed by . : ： , or whitespace, then x alone.
_REF_OPTION_RULES = (
    re.compile(r"\(([A-Za-z0-9])\)"),
    re.compile(r"\b([A-Za-z0-9])(?=[.:\uff1a,\s])"),
    re.compile(r"\b([A-Za-z0-9])\b"),
)


def reference_options(text: str) -> set[str]:
    """The reference's option set of ``text``; when no rule matches, the whole text is the one "option"."""
    for rule in _REF_OPTION_RULES:
        found = set(rule.findall(text))
        if found:
            return found
    return {text}


def reference_option_jaccard(pred: str | None, truth: str) -> float:
    """Jaccard of the reference option sets (never empty); 0 without a boxed answer. ``truth`` is used unstripped."""
    if pred is None:
        return 0.0
    p, t = reference_options(pred), reference_options(truth)
    return len(p & t) / len(p | t)


_REF_NAME = re.compile(r"<\|ref\|>(.*?)<\|/ref\|>")  # no re.S: a newline inside a tag breaks it
_REF_BOX = re.compile(r"<\|box\|>(.*?)<\|/box\|>")
_INT64 = range(-(2**63), 2**63)


def _reference_first_box(text: str) -> tuple[str, tuple[int, ...] | None] | None:
    """(lower-cased ref name, 4 integer coordinates or None) of the first ref tag and the first box tag.

    Ref and box tags are found independently and paired by order; the name is lower-cased but not stripped. The box
    text loses its parentheses, is split on commas (blank pieces dropped) and each piece read with ``int``: anything
    but exactly four integers (or one outside int64, which the reference's tensor cannot hold) gives None.
    """
    m = _REF_BOXED.search(text)  # the reference unwraps a box once more (the ground truth may be boxed)
    text = m.group(1).strip() if m else text.strip()
    names, boxes = _REF_NAME.findall(text), _REF_BOX.findall(text)
    if not names or not boxes:
        return None
    pieces = [p for p in boxes[0].replace("(", "").replace(")", "").split(",") if p.strip()]
    try:
        coords: tuple[int, ...] | None = tuple(int(p) for p in pieces)
    except ValueError:
        coords = None
    if coords is not None and (len(coords) != 4 or any(v not in _INT64 for v in coords)):
        coords = None
    return names[0].lower(), coords


def reference_box_iou(truth: Sequence[int], pred: Sequence[int]) -> float:
    """The reference's IoU: corners taken as given (never reordered, no range check), integer areas, then
    ``inter / (union + 1e-16)`` in float32 (torch's default dtype). A box with x2 < x1 or y2 < y1 overlaps nothing.
    Bit-identical to the reference while areas stay below 2**24 (every 0-99 box); the reference's int64 overflow for
    absurd coordinates is not reproduced."""
    ix = max(0, min(truth[2], pred[2]) - max(truth[0], pred[0]))
    iy = max(0, min(truth[3], pred[3]) - max(truth[1], pred[1]))
    inter = ix * iy
    union = (truth[2] - truth[0]) * (truth[3] - truth[1]) + (pred[2] - pred[0]) * (pred[3] - pred[1]) - inter
    return float(np.float32(float(inter)) / (np.float32(float(union)) + np.float32(1e-16)))


def reference_grounding_iou(response: str, truth: str, name_penalty: float = 0.95) -> float:
    """The reference grounding reward of one response: 0 without a boxed answer, without a ref+box pair on either
    side or without exactly four integers; else the IoU of the first box pair × ``name_penalty`` when the
    lower-cased (unstripped) ref names differ."""
    _, answer = reference_split(response)
    if answer is None:
        return 0.0
    t, p = _reference_first_box(truth), _reference_first_box(answer)
    if t is None or p is None or t[1] is None or p[1] is None:
        return 0.0
    iou = reference_box_iou(t[1], p[1])
    return iou if t[0] == p[0] else iou * name_penalty


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


def format_reward(responses: Sequence[str], samples: Sequence[Sample], *, semantics: str = "paper",
                  **_: Any) -> list[float | None]:
    """1.0 when the response is reasoning followed by exactly one non-empty ``\\boxed{}``, else 0.0 (every task).

    ``paper``: only whitespace/punctuation may follow the box. ``reference``: text after the box is ignored and a box
    ends at the first ``}`` (``reference_format_ok``).
    """
    ok = reference_format_ok if _reference_mode("format", semantics) else is_reasoning_then_one_box
    _check(responses, samples)
    return [1.0 if ok(r) else 0.0 for r in responses]


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


def _vqa_values(name: str, responses: Sequence[str], samples: Sequence[Sample], boxed: str,
                semantics: str) -> list[float | None]:
    reference = _reference_mode(name, semantics)
    _check(responses, samples)
    out: list[float | None] = []
    for r, s in zip(responses, samples):
        if _family(s) != "multiple_choice":
            out.append(None)
        elif reference:
            out.append(reference_option_jaccard(reference_split(r)[1], s.answer))
        else:
            out.append(option_jaccard(extract_boxed(r, boxed), s.answer))
    return out


def vqa_reward(responses: Sequence[str], samples: Sequence[Sample], *, boxed: str = "last",
               semantics: str = "paper", **_: Any) -> list[float | None]:
    """Option-set Jaccard of the boxed answer with the ground truth (multiple-choice tasks only; 0 when no box).

    ``reference`` semantics: the first box (to the first ``}``, ``boxed`` is ignored) and the reference's option rules
    (``reference_options``: case-sensitive letters and digits, the whole text when no option is found).
    """
    return _vqa_values("vqa", responses, samples, boxed, semantics)


def vqa_strict_reward(responses: Sequence[str], samples: Sequence[Sample], *, boxed: str = "last",
                      semantics: str = "paper", **_: Any) -> list[float | None]:
    """1.0 only when the boxed option set equals the ground-truth set (multiple-choice tasks only).

    The reference code has no strict variant: ``reference`` semantics gives 1.0 where its Jaccard is 1.
    """
    return [None if v is None else float(v == 1.0)
            for v in _vqa_values("vqa_strict", responses, samples, boxed, semantics)]


# ----------------------------------------------------------------------------------------------------- grounding


def grounding_iou_reward(responses: Sequence[str], samples: Sequence[Sample], *, boxed: str = "last",
                         name_penalty: float = 0.95, semantics: str = "paper", **_: Any) -> list[float | None]:
    """IoU of the first predicted box with the first ground-truth box, × ``name_penalty`` when the ref names differ.

    ``paper`` semantics: the first well-formed box with coordinates in 0-99 (corners reordered, names compared
    stripped and lower-cased) is scored; 0 when there is none (text instead of numbers, coordinates outside 0-99) and
    when the ground truth has no box (a negative sample). The boxed answer is parsed; without a box the whole response
    is. ``reference`` semantics: ``reference_grounding_iou`` (0 without a box; the first box tag as written, corners
    not reordered, no range check, names lower-cased but not stripped). Grounding tasks only.
    """
    reference = _reference_mode("grounding_iou", semantics)
    _check(responses, samples)
    out: list[float | None] = []
    for r, s in zip(responses, samples):
        if _family(s) != "grounding":
            out.append(None)
            continue
        if reference:
            out.append(reference_grounding_iou(r, s.answer, name_penalty))
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
    """One scorer instance per (metric, settings): model-backed scorers load their weights once.

    ``demo_scorers: <dir>`` in the settings stands for the offline demo's tiny random component models
    (``chexone.metrics.demo_scorers``, built into ``<dir>`` on first use): it is replaced by their paths before the
    metric is built, so the demo runs the same metric code as a real run."""
    from chexone.registry import METRICS

    settings = dict(kwargs_key)
    if "demo_scorers" in settings:
        from chexone.metrics.demo_scorers import demo_scorer_settings

        settings = {**demo_scorer_settings(str(settings.pop("demo_scorers")), metric), **settings}
    obj = METRICS.get(metric)
    scorer = obj if hasattr(obj, "score") and not isinstance(obj, type) else obj(**settings)
    if not hasattr(scorer, "score"):
        raise TypeError(f"metric {metric!r} has no per-sample score(preds, refs) method; it cannot drive a reward")
    return scorer


def report_reward(responses: Sequence[str], samples: Sequence[Sample], *, boxed: str = "last",
                  metric: str = "radcliq", mapping: str | None = None, metric_kwargs: dict | None = None,
                  no_reasoning_penalty: float = 0.95, semantics: str = "paper", **_: Any) -> list[float | None]:
    """Report-generation reward from a per-sample report metric (report tasks only).

    The metric (registry ``chexone.metrics``, e.g. ``radcliq``) must offer ``score(preds, refs) -> list[float]`` and a
    ``lower_is_better`` flag. For lower-is-better scores q (RadCliQ-v1) the reward is the monotone ``sigmoid(-q)`` in
    (0, 1) (``mapping=sigmoid``), or the reference code's ``2*sigmoid(-q)`` in (0, 2) × ``no_reasoning_penalty`` when
    the response has no reasoning before the box (``mapping=reference``). Per-sample 1/q is never used: it is not
    monotone across 0. Higher-is-better scores in [0, 1] are used as they are. The prediction is the boxed answer (or
    the whole response when there is no box: 0 reward in reasoning mode would hide all signal early in training).
    ``mapping`` defaults to ``sigmoid``.

    ``reference`` semantics: the reference code exactly — the prediction is the first box (to the first ``}``,
    ``boxed`` is ignored); no box or an empty box gives 0 without scoring; lower-is-better scores map to
    ``2*sigmoid(-q)`` (``mapping`` must be unset or ``reference``); × ``no_reasoning_penalty`` when nothing precedes
    the box (a higher-is-better score is used as it is, with the same penalty).
    """
    reference = _reference_mode("report", semantics)
    _check(responses, samples)
    if reference:
        if mapping not in (None, "reference"):
            raise ValueError(f"report reward: semantics='reference' uses the reference mapping 2*sigmoid(-q); "
                             f"mapping={mapping!r} contradicts it (drop mapping or set it to 'reference')")
        return _reference_report(responses, samples, metric, metric_kwargs, no_reasoning_penalty)
    mapping = "sigmoid" if mapping is None else mapping
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


def _reference_report(responses: Sequence[str], samples: Sequence[Sample], metric: str, metric_kwargs: dict | None,
                      no_reasoning_penalty: float) -> list[float | None]:
    out: list[float | None] = [None] * len(samples)
    scored: list[tuple[int, str, bool]] = []  # (index, boxed answer, has reasoning)
    for i, s in enumerate(samples):
        if _family(s) != "report":
            continue
        reasoning, answer = reference_split(responses[i])
        if answer is None:
            out[i] = 0.0
        else:
            scored.append((i, answer, reasoning is not None))
    if not scored:
        return out
    scorer = _scorer(metric, tuple(sorted((metric_kwargs or {}).items())))
    scores = scorer.score([a for _, a, _ in scored], [samples[i].answer for i, _, _ in scored])
    lower_is_better = bool(getattr(scorer, "lower_is_better", False))
    for (i, _, reasoned), q in zip(scored, scores):
        value = 2.0 * sigmoid(-q) if lower_is_better else float(q)
        out[i] = value if reasoned else value * no_reasoning_penalty
    return out
