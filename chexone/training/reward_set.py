"""The recipe's GRPO rewards: which reward scores which sample, with what context, and every value checked.

**Which rewards apply to a sample** (docs/plugins.md, "The reward contract"), for each reward in order:

1. the tasks its ``grpo.rewards`` entry lists under ``tasks:``, when it lists any;
2. otherwise the tasks that declare it in ``Task.rewards`` (``close_vqa`` declares ``vqa``, a plugin task its own
   reward): a plugin task of family multiple_choice that declares its own reward is not also scored by ``vqa``;
3. otherwise (no task declares it: ``format``, ``vqa_strict``, a plugin reward for built-in tasks) every sample; the
   reward returns None for those it does not own.

A reward a task declares but ``grpo.rewards`` does not list is applied with weight 1.0 (the task's author meant it);
list it with ``weight: 0`` to only log it. The plan is printed at the start of a run.

**What a reward receives**: ``reward(responses, samples, *, boxed, prompts, reasoning, step, **recipe_kwargs)`` — the
completions and their samples (every field of the sample schema), which ``\boxed{}`` counts (``first``|``last``), the
user text each completion answered, whether it was asked in reasoning mode, and the optimizer step. It must accept
``**kwargs`` (more context may be added).

**What it returns**: one finite number (or None: not scored) per completion. Anything else — an exception, the wrong
number of values, NaN/inf, a string or another non-number — is a *reward error*: it names the reward, the sample, the
completion and the cause, and ``grpo.reward_errors`` decides what happens (``fail`` stops the run, ``zero`` scores 0,
counts it and warns). A non-finite reward would otherwise flow into the advantages and from there into the weights.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from chexone.data.sample import Sample

log = logging.getLogger(__name__)


#: Context arguments that hold one entry per completion (sliced when a completion is scored on its own).
PER_COMPLETION = ("prompts", "reasoning")


class RewardError(RuntimeError):
    """A reward raised or returned something unusable; the message names the reward, the sample and the cause."""


def _as_reward_value(value: Any) -> tuple[float | None, str | None]:
    """(value as float or None, problem description or None)."""
    if value is None:
        return None, None
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, (str, bytes)):
        value = value.item()  # 0-d numpy / torch scalars
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None, f"returned {value!r:.60} ({type(value).__name__}), not a number or None"
    number = float(value)
    if not math.isfinite(number):
        return None, f"returned {number} (rewards must be finite numbers)"
    return number, None


@dataclass
class RewardPlan:
    """One reward as a run applies it."""

    name: str
    weight: float
    kwargs: dict[str, Any]
    fn: Callable[..., Any]
    #: Task names it scores; None = every sample (the reward returns None for samples it does not own).
    tasks: frozenset[str] | None
    #: Why it is in the plan: "grpo.rewards" or "declared by task X".
    source: str

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def describe(self) -> str:
        where = "every task" if self.tasks is None else ", ".join(sorted(self.tasks)) or "no task in this run"
        extra = "" if self.source == "grpo.rewards" else f"; {self.source}, not in grpo.rewards"
        return f"{self.name} (weight {self.weight:g}; {where}{extra})"


def declared_rewards(task_names: Iterable[str], task_lookup: Callable[[str], Any]) -> dict[str, list[str]]:
    """reward name -> the tasks (of ``task_names``) that declare it in ``Task.rewards``. A task that cannot be loaded
    is left out with a warning: an installed but unused broken plugin must not stop this run."""
    out: dict[str, list[str]] = defaultdict(list)
    for task_name in task_names:
        try:
            task = task_lookup(task_name)
        except Exception as err:  # noqa: BLE001 - reported, and refused only where the run selects the task
            log.warning("task %r could not be loaded to read its rewards: %s", task_name, err)
            continue
        for reward in getattr(task, "rewards", ()) or ():
            out[str(reward)].append(task_name)
    return dict(out)


def plan_rewards(specs: Iterable[Any], task_names: Iterable[str],
                 task_lookup: Callable[[str], Any]) -> list[RewardPlan]:
    """The rewards a run applies and to which tasks (see the module docstring for the rules)."""
    from chexone.registry import REWARDS

    task_names = list(task_names)
    declared = declared_rewards(task_names, task_lookup)
    plans = []
    for s in specs:
        listed = [str(t) for t in (getattr(s, "tasks", None) or [])]
        scope = frozenset(listed) if listed else (frozenset(declared[s.name]) if s.name in declared else None)
        plans.append(RewardPlan(s.name, float(s.weight), dict(s.kwargs or {}), REWARDS.get(s.name), scope,
                                "grpo.rewards"))
    listed_names = {p.name for p in plans}
    for name, tasks in sorted(declared.items()):
        if name not in listed_names:
            plans.append(RewardPlan(name, 1.0, {}, REWARDS.get(name), frozenset(tasks),
                                    f"declared by task {', '.join(sorted(tasks))}"))
    return plans


class RewardSet:
    """The run's reward plan; ``score`` calls each reward once on the completions it applies to and checks every
    value. ``score_async`` does the same on a background thread, so rewards can be computed while the caller runs
    other work (e.g. the log-prob passes of a GRPO step, which do not need rewards)."""

    def __init__(self, specs: list[Any], boxed: str, on_error: str, *, task_names: Iterable[str] | None = None,
                 task_lookup: Callable[[str], Any] | None = None, workers: int = 1):
        if not specs:
            raise ValueError("grpo.rewards is empty: list at least one reward, e.g. [{name: format}, {name: vqa}]")
        if on_error not in ("fail", "zero"):
            raise ValueError(f"grpo.reward_errors={on_error!r}; choose fail | zero")
        if task_lookup is None:
            from chexone.tasks import get_task as task_lookup
        if task_names is None:
            from chexone.registry import TASKS

            task_names = TASKS.names()
        self.plans = plan_rewards(specs, task_names, task_lookup)
        self.weights = {p.name: p.weight for p in self.plans}
        self.boxed = boxed
        self.on_error = on_error
        self.errors: dict[str, int] = defaultdict(int)
        if workers < 1:
            raise ValueError(f"RewardSet(workers={workers}): at least one worker thread is needed")
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None  # started on the first score_async
        self._errors_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # threads and locks do not pickle; a copy starts its own
        state = dict(self.__dict__)
        state["_executor"], state["_errors_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._errors_lock = threading.Lock()

    def describe(self) -> str:
        return "rewards: " + " | ".join(p.describe() for p in self.plans)

    def score(self, texts: list[str], samples: list[Sample], *, prompts: Sequence[str] | None = None,
              reasoning: Sequence[bool] | None = None, step: int = 0) -> dict[str, list[float | None]]:
        """Per reward, one checked value (or None where it does not apply) per completion."""
        prompts = list(prompts) if prompts is not None else [s.question for s in samples]
        reasoning = list(reasoning) if reasoning is not None else [True] * len(samples)
        out = {}
        for plan in self.plans:
            idx = [i for i, s in enumerate(samples) if plan.applies_to(s.task)]
            values: list[float | None] = [None] * len(samples)
            if idx:
                context = {"boxed": self.boxed, "prompts": [prompts[i] for i in idx],
                           "reasoning": [reasoning[i] for i in idx], "step": step}
                scored = self._score_reward(plan.name, plan.fn, {**context, **plan.kwargs}, [texts[i] for i in idx],
                                            [samples[i] for i in idx])
                for i, v in zip(idx, scored):
                    values[i] = v
            out[plan.name] = values
        return out

    def score_async(self, texts: list[str], samples: list[Sample], *, prompts: Sequence[str] | None = None,
                    reasoning: Sequence[bool] | None = None, step: int = 0) -> Future:
        """``score`` on a background worker: returns at once with a future whose ``result()`` is exactly what
        ``score`` returns, or raises what it raises (a ``RewardError`` under ``grpo.reward_errors=fail``).

        Every reward runs on the worker, cheap ones included: a reward declares no cost, the cheap built-in ones
        take microseconds, and one code path keeps the rewards' order and the error counts as in ``score``. With
        the default single worker, calls run one after another in the order they were made. Error counts
        (``errors``) are complete once ``result()`` has returned. The inputs are copied, so the caller may reuse
        its lists at once.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="chexone-rewards")
        return self._executor.submit(self.score, list(texts), list(samples),
                                     prompts=list(prompts) if prompts is not None else None,
                                     reasoning=list(reasoning) if reasoning is not None else None, step=step)

    def close(self) -> None:
        """Stop the background worker after the calls already made (a later ``score_async`` starts a new one)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _score_reward(self, name: str, fn: Callable, kwargs: dict, texts: list[str],
                      samples: list[Sample]) -> list[float | None]:
        try:
            values = fn(texts, samples, **kwargs)
        except Exception:  # noqa: BLE001 - score one by one to name the failing sample, then fail or zero
            return [self._score_one(name, fn, kwargs, i, t, s) for i, (t, s) in enumerate(zip(texts, samples))]
        try:
            values = list(values)
        except TypeError:
            return self._batch_error(name, texts, samples, f"returned {type(values).__name__}, not a list of values")
        if len(values) != len(texts):
            return self._batch_error(name, texts, samples,
                                     f"returned {len(values)} values for {len(texts)} completions")
        out: list[float | None] = []
        for value, text, sample in zip(values, texts, samples):
            number, problem = _as_reward_value(value)
            out.append(number if problem is None else self._error(name, sample, text, problem))
        return out

    def _score_one(self, name: str, fn: Callable, kwargs: dict, index: int, text: str,
                   sample: Sample) -> float | None:
        try:
            one = {k: ([v[index]] if k in PER_COMPLETION else v) for k, v in kwargs.items()}
            values = list(fn([text], [sample], **one))
        except Exception as err:  # noqa: BLE001
            return self._error(name, sample, text, f"{type(err).__name__}: {err}", err)
        if len(values) != 1:
            return self._error(name, sample, text, f"returned {len(values)} values for 1 completion")
        number, problem = _as_reward_value(values[0])
        return number if problem is None else self._error(name, sample, text, problem)

    def _error(self, name: str, sample: Sample, text: str, cause: str, err: BaseException | None = None) -> float:
        message = (f"reward {name!r} failed on sample {sample.id!r} (task {sample.task}) with completion "
                   f"{text[:200]!r}: {cause}")
        if self.on_error == "fail":
            raise RewardError(message + " (set grpo.reward_errors=zero to score 0 and continue)") from err
        with self._errors_lock:
            self.errors[name] += 1
        log.warning(message + " -> scored 0")
        return 0.0

    def _batch_error(self, name: str, texts: Sequence[str], samples: Sequence[Sample], cause: str) -> list[float]:
        """A whole-batch problem (no value can be matched to its completion): every completion scores 0 under zero."""
        ids = list(dict.fromkeys(s.id for s in samples))
        shown = ", ".join(repr(i) for i in ids[:4]) + (" ..." if len(ids) > 4 else "")
        message = f"reward {name!r} {cause} (samples {shown}; first completion {texts[0][:200]!r})"
        if self.on_error == "fail":
            raise RewardError(message + " (set grpo.reward_errors=zero to score 0 and continue)")
        with self._errors_lock:
            self.errors[name] += len(texts)
        log.warning(message + f" -> all {len(texts)} completions scored 0")
        return [0.0] * len(texts)


__all__ = ["RewardError", "RewardSet"]
