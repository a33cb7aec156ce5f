"""Reasoning metrics (docs/method.md §5): factuality of reasoning traces and self-consistency of sampled answers.

* :class:`Factuality` (``factuality``): |E(reasoning) ∩ E(reference report)| / |E(reasoning)|, E = the set of
  entities a RadGraph model extracts (RadGraph-XL in the paper: ``model_type="radgraph-xl"``). An entity is
  ``(tokens, label)`` with tokens lower-cased and whitespace-normalised (``match="tokens+label"``, so "effusion"
  present does not match "effusion" absent), or the tokens alone (``match="tokens"``). The reasoning is the text before
  the first ``\\boxed{`` (the final answer is not reasoning); ``reasoning_only=False`` keeps the whole response.
  A trace with no entity has no defined factuality: it is skipped and counted in ``no_entities``.
* :class:`SelfConsistency` (``self_consistency``): for one question answered K' times (temperature sampling),
  SC = 1 − H(p)/log(K), p = the empirical distribution of the parsed final answers, H in nats, K = the number of
  answer options (1 = all trials agree, 0 = uniform over K options). Answers that parse to nothing form one outcome
  ("unparsed"). With more distinct outcomes than K (unparsed or multi-letter answers) H can exceed log K: SC is
  clipped at 0. K = 1 gives SC = 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from chexone.metrics._common import PerSampleMetric, check_pairs

__all__ = ["Factuality", "SelfConsistency", "entity_set", "factuality_score", "self_consistency"]


def entity_set(annotation: dict, match: str = "tokens+label") -> set:
    """Entities of one RadGraph annotation as a set (see module docstring for ``match``)."""
    out = set()
    for e in (annotation.get("entities", {}) or {}).values():
        tokens = " ".join(str(e["tokens"]).lower().split())
        out.add((tokens, e["label"]) if match == "tokens+label" else tokens)
    return out


def factuality_score(reasoning_entities: set, reference_entities: set) -> float | None:
    """|E_r ∩ E_ref| / |E_r|, or None when the reasoning has no entity."""
    if not reasoning_entities:
        return None
    return len(reasoning_entities & reference_entities) / len(reasoning_entities)


def reasoning_part(response: str) -> str:
    i = response.find("\\boxed{")
    return response[:i] if i >= 0 else response


class Factuality(PerSampleMetric):
    """Mean factuality of reasoning traces against reference reports.

    Args:
        model_type, radgraph_model_dir, backbone_path, device: the RadGraph model (see
            :class:`chexone.metrics.radgraph.RadGraphAnnotator`); default RadGraph-XL as in the paper.
        match: "tokens+label" (default) or "tokens".
        reasoning_only: score only the text before the first ``\\boxed{``.
        extractor: instead of a RadGraph model, a callable ``texts -> list[annotation dict]``.
    """

    higher_is_better = True
    #: evaluation harness: the whole response against the reference report (meta['report'])
    eval_inputs = ("response", "report")

    def __init__(self, model_type: str = "radgraph-xl", radgraph_model_dir: str | None = None,
                 backbone_path: str | None = None, *, match: str = "tokens+label", reasoning_only: bool = True,
                 device: str | None = None, extractor: Callable[[list[str]], list[dict]] | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if match not in ("tokens+label", "tokens"):
            raise ValueError(f"match={match!r}; choose 'tokens+label' or 'tokens'")
        self.match = match
        self.reasoning_only = bool(reasoning_only)
        if extractor is None:
            from chexone.metrics.radgraph import RadGraphAnnotator

            extractor = RadGraphAnnotator(model_type, radgraph_model_dir, backbone_path, device=device).annotate
        self.extractor = extractor
        self.add_state("no_entities", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float | None]:
        check_pairs(preds, refs)
        texts = [reasoning_part(p) if self.reasoning_only else p for p in preds]
        ann = self.extractor(list(texts) + list(refs))
        n = len(texts)
        return [factuality_score(entity_set(ann[i], self.match), entity_set(ann[n + i], self.match))
                for i in range(n)]

    def _score(self, preds, targets):
        scores = self.score(preds, targets)
        self.no_entities += sum(s is None for s in scores)
        return scores


def self_consistency(answers: Sequence[Any], num_options: int) -> float:
    """1 − H(p)/log(K) of the empirical distribution of ``answers`` (hashable outcomes), clipped to [0, 1]."""
    if not answers:
        raise ValueError("self-consistency needs at least one answer")
    if num_options < 1:
        raise ValueError(f"num_options must be >= 1, got {num_options}")
    if num_options == 1:
        return 1.0
    counts = Counter(answers)
    n = len(answers)
    h = -sum((c / n) * math.log(c / n) for c in counts.values())
    return min(1.0, max(0.0, 1.0 - h / math.log(num_options)))


class SelfConsistency(PerSampleMetric):
    """Mean self-consistency over questions.

    ``update(preds, targets)``: ``preds[i]`` = the K' sampled final answers to question i; ``targets[i]`` = its number
    of options K (an int) or its option list (K = its length). Answers are canonicalised with the task's
    ``parse_answer`` (default ``close_vqa``: option-letter sets).
    """

    higher_is_better = True
    #: evaluation harness: the K sampled final answers against the option list
    eval_inputs = ("samples", "options")

    def __init__(self, task: str = "close_vqa", **kwargs: Any):
        super().__init__(**kwargs)
        from chexone.tasks import get_task

        self.task = task
        self._parse = get_task(task).parse_answer

    def _outcome(self, answer: str | None) -> Any:
        parsed = self._parse(answer) if answer is not None else None
        return parsed if parsed else "<unparsed>"

    def score(self, preds: Sequence[Sequence[str | None]], refs: Sequence[Any]) -> list[float]:
        out = []
        for answers, opt in zip(preds, refs):
            if isinstance(answers, str):
                raise TypeError("each prediction must be the list of sampled answers to one question")
            k = int(opt) if isinstance(opt, (int, float)) else len(opt)
            out.append(self_consistency([self._outcome(a) for a in answers], k))
        return out

    def _score(self, preds, targets):
        return self.score(preds, targets)
