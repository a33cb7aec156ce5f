"""The recipe's GRPO rewards, resolved from the registry and scored in one batched call each, with every value checked.

A reward returns one finite number (or None: "not my task") per completion. Anything else — an exception, the wrong
number of values, NaN/inf, a string or another non-number — is a *reward error*: it names the reward, the sample, the
completion and the cause, and ``grpo.reward_errors`` decides what happens (``fail`` stops the run, ``zero`` scores 0,
counts it and warns). A non-finite reward would otherwise flow into the advantages and from there into the weights.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import defaultdict
from typing import Any, Callable, Sequence

from chexone.data.sample import Sample

log = logging.getLogger(__name__)


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


class RewardSet:
    """Rewards by name with weights and keyword arguments; ``score`` returns checked values per reward."""

    def __init__(self, specs: list[Any], boxed: str, on_error: str):
        from chexone.registry import REWARDS

        if not specs:
            raise ValueError("grpo.rewards is empty: list at least one reward, e.g. [{name: format}, {name: vqa}]")
        if on_error not in ("fail", "zero"):
            raise ValueError(f"grpo.reward_errors={on_error!r}; choose fail | zero")
        self.items = [(s.name, float(s.weight), dict(s.kwargs), REWARDS.get(s.name)) for s in specs]
        self.weights = {name: w for name, w, _, _ in self.items}
        self.boxed = boxed
        self.on_error = on_error
        self.errors: dict[str, int] = defaultdict(int)

    def score(self, texts: list[str], samples: list[Sample]) -> dict[str, list[float | None]]:
        return {name: self._score_reward(name, fn, kwargs, texts, samples) for name, _, kwargs, fn in self.items}

    def _score_reward(self, name: str, fn: Callable, kwargs: dict, texts: list[str],
                      samples: list[Sample]) -> list[float | None]:
        try:
            values = fn(texts, samples, boxed=self.boxed, **kwargs)
        except Exception:  # noqa: BLE001 - score one by one to name the failing sample, then fail or zero
            return [self._score_one(name, fn, kwargs, t, s) for t, s in zip(texts, samples)]
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

    def _score_one(self, name: str, fn: Callable, kwargs: dict, text: str, sample: Sample) -> float | None:
        try:
            values = list(fn([text], [sample], boxed=self.boxed, **kwargs))
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
        self.errors[name] += len(texts)
        log.warning(message + f" -> all {len(texts)} completions scored 0")
        return [0.0] * len(texts)


__all__ = ["RewardError", "RewardSet"]
