"""``llm_judge``: a GREEN-style report score from an LLM judge behind an OpenAI-compatible endpoint.

For every (candidate, reference) pair the judge is asked (:func:`chexone_llm_judge.judgement.build_messages`) for
the matched findings and the candidate's clinically significant errors in GREEN's six categories, as JSON; the
per-sample score is ``matched / (matched + significant errors)`` (0 when nothing is matched), the reported value
their mean (:mod:`chexone_llm_judge.judgement`).

Settings (constructor arguments = ``eval.metric_kwargs.llm_judge.KEY``; the environment variables are read when an
argument is not given):

=================  ==========================  ==============================================================
argument           environment variable        meaning
=================  ==========================  ==============================================================
``base_url``       ``CHEXONE_JUDGE_BASE_URL``  ``http(s)://HOST:PORT/v1`` (``/v1`` is added to a bare host)
``model``          ``CHEXONE_JUDGE_MODEL``     the judge model's name on that endpoint
``api_key_env``    —                           the variable holding the API key (default
                                               ``CHEXONE_JUDGE_API_KEY``; a recipe should never hold the key
                                               itself: the resolved recipe is saved with the results)
``cache_dir``      ``CHEXONE_JUDGE_CACHE``     default ``$CHEXONE_CACHE/llm-judge`` (``~/.cache/chexone/...``)
=================  ==========================  ==============================================================

``timeout`` (60 s per request), ``retries`` (3, exponential ``backoff`` from 0.5 s up to ``max_backoff`` 8 s),
``concurrency`` (4 requests in flight), ``temperature`` (0), ``max_tokens`` (1024), ``extra_body`` (merged into every
request, e.g. ``{response_format: {type: json_object}}``), ``cache`` (true), ``check_endpoint`` (true: ``GET /models``
when the metric is built, so an unreachable judge stops ``python -m chexone.evaluate`` before any answer is
generated), ``on_bad_answer`` (``error``: a judgement that is not the JSON asked for, after ``parse_retries`` = 1
new request, stops scoring with one line; ``skip``: that sample is not scored and is counted in ``bad_answers``),
``prediction`` / ``reference`` (what the harness feeds: ``final`` and ``answer`` by default, i.e. the generated report
against the reference report of a report-generation task; ``reference="report"`` compares with ``meta['report']``,
``prediction="response"`` judges the whole output, reasoning included).

The cache is keyed by the model and the prompt (with the prompt version and sampling settings), so scoring the same
answers again — ``score()`` after ``update()``, a resumed evaluation, ``compare`` — makes no request. Empty
candidates score 0 and empty references are not scored, both without a request.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from chexone.plugin_api import PerSampleMetric

from chexone_llm_judge.client import ChatClient, DiskCache, JudgeConfigError, JudgeError, JudgeResponseError
from chexone_llm_judge.judgement import (CATEGORIES, PROMPT_VERSION, Judgement, JudgementParseError, build_messages,
                                         parse_judgement)

ENV_BASE_URL = "CHEXONE_JUDGE_BASE_URL"
ENV_MODEL = "CHEXONE_JUDGE_MODEL"
ENV_API_KEY = "CHEXONE_JUDGE_API_KEY"
ENV_CACHE = "CHEXONE_JUDGE_CACHE"

#: (base URL, model, key digest) already checked in this process: the harness builds a metric several times per run.
_CHECKED: set[tuple[str, str, str]] = set()


def default_cache_dir() -> str:
    if os.environ.get(ENV_CACHE):
        return os.environ[ENV_CACHE]
    root = os.environ.get("CHEXONE_CACHE") or os.path.join("~", ".cache", "chexone")
    return os.path.join(root, "llm-judge")


class LLMJudge(PerSampleMetric):
    """GREEN-style report score from an LLM judge; see the module docstring for the settings."""

    primary = "green"
    higher_is_better = True
    paired_test = "paired_t"

    def __init__(self, base_url: str | None = None, model: str | None = None, *, api_key: str | None = None,
                 api_key_env: str = ENV_API_KEY, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 8.0, concurrency: int = 4, temperature: float = 0.0, max_tokens: int = 1024,
                 extra_body: dict[str, Any] | None = None, cache: bool = True, cache_dir: str | None = None,
                 check_endpoint: bool = True, on_bad_answer: str = "error", parse_retries: int = 1,
                 prediction: str = "final", reference: str = "answer", **kwargs: Any):
        super().__init__(**kwargs)
        base_url = base_url or os.environ.get(ENV_BASE_URL, "")
        model = model or os.environ.get(ENV_MODEL, "")
        if not base_url:
            raise JudgeConfigError(f"llm_judge: no judge endpoint: set base_url= (eval.metric_kwargs.llm_judge."
                                   f"base_url) or {ENV_BASE_URL}, e.g. http://127.0.0.1:8000/v1")
        if on_bad_answer not in ("error", "skip"):
            raise JudgeConfigError(f"llm_judge: on_bad_answer must be 'error' or 'skip', got {on_bad_answer!r}")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 64:
            raise JudgeConfigError(f"llm_judge: concurrency must be an integer in 1..64, got {concurrency!r}")
        if not isinstance(parse_retries, int) or not 0 <= parse_retries <= 5:
            raise JudgeConfigError(f"llm_judge: parse_retries must be an integer in 0..5, got {parse_retries!r}")
        if prediction not in ("final", "response") or reference not in ("answer", "report"):
            raise JudgeConfigError(f"llm_judge: prediction must be 'final' or 'response' and reference 'answer' or "
                                   f"'report', got {prediction!r}, {reference!r}")
        key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
        self.client = ChatClient(base_url, model, api_key=key, timeout=timeout, retries=retries, backoff=backoff,
                                 max_backoff=max_backoff, temperature=temperature, max_tokens=max_tokens,
                                 extra_body=extra_body)
        #: What the chexone harness feeds update()/score() (read from the instance).
        self.eval_inputs = (prediction, reference)
        self.concurrency = concurrency
        self.on_bad_answer = on_bad_answer
        self.parse_retries = parse_retries
        self.settings = {"prompt": PROMPT_VERSION, "temperature": temperature, "max_tokens": max_tokens,
                         "extra_body": extra_body or {}}
        self.disk = DiskCache(cache_dir or default_cache_dir()) if cache else None
        self._memory: dict[str, Judgement | str] = {}  # "bad": a bad answer (on_bad_answer=skip)
        self.stats: Counter[str] = Counter()
        if check_endpoint:
            token = (self.client.base_url, self.client.model, hashlib.sha256((key or "").encode()).hexdigest())
            if token not in _CHECKED:
                served = self.client.check()
                if served and self.client.model not in served:  # some servers accept any name: only a warning
                    warnings.warn(f"llm_judge: the endpoint {self.client.base_url} does not list model "
                                  f"{self.client.model!r} (it lists: {', '.join(served[:10])})", stacklevel=2)
                _CHECKED.add(token)
        self.add_state("matched", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("significant", default=torch.zeros(len(CATEGORIES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("insignificant", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("judged", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bad_answers", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("empty_candidates", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    # ------------------------------------------------------------------------------------------------ judging
    def _ask(self, messages: list[dict[str, str]]) -> tuple[Judgement | None, str]:
        """One judgement from the endpoint (re-asked ``parse_retries`` times when it is not the JSON asked for)."""
        last = ""
        for _ in range(self.parse_retries + 1):
            content = self.client.complete(messages)
            try:
                return parse_judgement(content), content
            except JudgementParseError as e:
                last = f"{e}: {' '.join(content.split())[:120]!r}"
        if self.on_bad_answer == "skip":
            return None, ""
        raise JudgeResponseError(f"llm_judge: the judge {self.client.model!r} at {self.client.base_url} did not "
                                 f"answer with the JSON object asked for ({last}); on_bad_answer=skip leaves such "
                                 "samples unscored")

    def _lookup(self, key: str) -> tuple[bool, Judgement | str | None]:
        if key in self._memory:
            self.stats["memory_hits"] += 1
            return True, self._memory[key]
        if self.disk is not None:
            entry = self.disk.get(key)
            if entry is not None:
                try:
                    j = parse_judgement(entry["content"])
                except (JudgementParseError, KeyError, TypeError):
                    return False, None
                self.stats["disk_hits"] += 1
                self._memory[key] = j
                return True, j
        return False, None

    def judge(self, candidates: Sequence[Any], references: Sequence[Any]) -> list[Judgement | str | None]:
        """A judgement per pair, from the caches or the endpoint (distinct uncached prompts, ``concurrency`` at a
        time); ``"empty"`` for an empty candidate, None for an empty reference, ``"bad"`` for a bad answer
        (on_bad_answer=skip)."""
        if isinstance(candidates, str) or isinstance(references, str):
            raise TypeError("llm_judge takes lists of reports, not single strings")
        if len(candidates) != len(references):
            raise ValueError(f"llm_judge: got {len(candidates)} candidates for {len(references)} references")
        out: list[Judgement | None | str] = [None] * len(candidates)
        todo: dict[str, tuple[list[dict[str, str]], list[int]]] = {}
        for i, (cand, ref) in enumerate(zip(candidates, references)):
            cand, ref = ("" if cand is None else str(cand)).strip(), ("" if ref is None else str(ref)).strip()
            if not ref:
                continue
            if not cand:
                out[i] = "empty"
                continue
            messages = build_messages(cand, ref)
            key = DiskCache.key(self.client.model, messages, self.settings)
            found, j = self._lookup(key)
            if found:
                out[i] = j
            else:
                todo.setdefault(key, (messages, []))[1].append(i)
        if todo:
            self._fetch(todo, out)
        return out

    def _fetch(self, todo: dict[str, tuple[list[dict[str, str]], list[int]]], out: list[Any]) -> None:
        workers = min(self.concurrency, len(todo))
        with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm-judge") as pool:
            futures = {pool.submit(self._ask, messages): key for key, (messages, _) in todo.items()}
            try:
                for fut in cf.as_completed(futures):
                    key = futures[fut]
                    judgement, content = fut.result()  # a JudgeError stops everything (below)
                    self.stats["judged"] += 1
                    if judgement is None:
                        self.stats["bad_answers"] += 1
                    elif self.disk is not None:
                        self.disk.put(key, {"model": self.client.model, "prompt_version": PROMPT_VERSION,
                                            "content": content})
                    self._memory[key] = judgement if judgement is not None else "bad"
                    for i in todo[key][1]:
                        out[i] = judgement if judgement is not None else "bad"
            except JudgeError:
                for f in futures:
                    f.cancel()
                raise

    # ------------------------------------------------------------------------------------------------ metric API
    def _score(self, preds: Sequence[Any], targets: Sequence[Any]) -> list[float | None]:
        return [self._value(j) for j in self.judge(preds, targets)]

    @staticmethod
    def _value(j: Judgement | None | str) -> float | None:
        if j == "empty":
            return 0.0
        return j.score if isinstance(j, Judgement) else None

    def score(self, preds: Sequence[Any], refs: Sequence[Any]) -> list[float | None]:
        """Per-sample scores (None = not scored); no state changes, and cached pairs cost no request."""
        return self._score(preds, refs)

    def update(self, preds: Sequence[Any], targets: Sequence[Any]) -> None:
        judgements = self.judge(preds, targets)
        self._add(self._value(j) for j in judgements)
        for j in judgements:
            if isinstance(j, Judgement):
                self.matched += j.matched
                self.significant += torch.tensor([j.significant[c] for c in CATEGORIES], dtype=torch.float64)
                self.insignificant += j.insignificant
                self.judged += 1
            elif j == "empty":
                self.empty_candidates += 1
            elif j == "bad":
                self.bad_answers += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = int(self.judged)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        out = {"green": super().compute(), "n": self.count.clone(), "judged": self.judged.clone(),
               "bad_answers": self.bad_answers.clone(), "empty_candidates": self.empty_candidates.clone(),
               "matched_findings": self.matched / n if n else nan,
               "significant_errors": self.significant.sum() / n if n else nan,
               "insignificant_errors": self.insignificant / n if n else nan}
        for i, c in enumerate(CATEGORIES):
            out[f"significant_{c}"] = self.significant[i] / n if n else nan
        return out


__all__ = ["LLMJudge", "JudgeError", "JudgeConfigError", "default_cache_dir"]
