"""The Task abstraction: how a sample becomes chat messages and a training target, and how an answer is parsed.

A task is looked up by the sample's ``task`` field in the ``chexone.tasks`` registry, so a plugin adds a task by
registering a ``Task`` subclass under a new name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from chexone.data.sample import Sample
from chexone.tasks.answers import extract_boxed, find_boxed

#: The paper's reasoning suffix (docs/method.md §4). The released data used a variant; it is configurable per recipe.
PAPER_REASONING_SUFFIX = "Please reason step by step and put your final answer within \\boxed{}."
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class PromptStyle:
    """Prompt settings shared by all tasks of a run (from the recipe's ``data`` section)."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    reasoning_suffix: str = PAPER_REASONING_SUFFIX
    #: Which ``\\boxed{}`` counts when a response holds several: "first" | "last".
    boxed: str = "last"


class Task:
    """Base class. Subclasses set ``name``/``family`` and override ``question_text``, ``parse_answer`` or ``answer_text``
    where their family differs."""

    name: ClassVar[str] = "task"
    #: Task family, used to group results and pick defaults ("multiple_choice", "open_vqa", "report", "grounding").
    family: ClassVar[str] = "generic"
    #: Reward names (registry ``chexone.rewards``) applied in GRPO besides ``format``.
    rewards: ClassVar[tuple[str, ...]] = ()
    #: Metric names (registry ``chexone.metrics``) reported in evaluation.
    metrics: ClassVar[tuple[str, ...]] = ()
    #: The question ``python -m chexone.infer --task NAME`` asks when none is given (``{phrase}`` is filled from
    #: ``--phrase``); None = the task needs an explicit question.
    default_question: ClassVar[str | None] = None

    # ---------------------------------------------------------------- prompt side
    def question_text(self, sample: Sample) -> str:
        """The user's text before any reasoning suffix."""
        return sample.question.strip()

    def user_text(self, sample: Sample, *, reasoning: bool, style: PromptStyle) -> str:
        text = self.question_text(sample)
        if reasoning and style.reasoning_suffix:
            text = f"{text} {style.reasoning_suffix}"
        return text

    def messages(self, sample: Sample, *, reasoning: bool, style: PromptStyle = PromptStyle()) -> list[dict[str, Any]]:
        """Chat messages (system + user) in the Qwen2.5-VL content-list form; images come before the text."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in sample.images]
        content.append({"type": "text", "text": self.user_text(sample, reasoning=reasoning, style=style)})
        msgs: list[dict[str, Any]] = []
        if style.system_prompt:
            msgs.append({"role": "system", "content": [{"type": "text", "text": style.system_prompt}]})
        msgs.append({"role": "user", "content": content})
        return msgs

    # ---------------------------------------------------------------- target side
    def answer_text(self, sample: Sample) -> str:
        """The final answer as the model should write it."""
        return sample.answer.strip()

    def target(self, sample: Sample, *, reasoning: bool) -> str:
        """The assistant turn to learn: the bare answer (instruction mode) or reasoning + ``\\boxed{answer}``."""
        answer = self.answer_text(sample)
        if not reasoning:
            return answer
        trace = (sample.reasoning or "").strip()
        if trace and "\\boxed{" in trace:
            return trace
        if trace:
            return f"{trace}\n\n**Final Answer:** \\boxed{{{answer}}}"
        return f"\\boxed{{{answer}}}"

    # ---------------------------------------------------------------- answer side
    def final_answer(self, response: str, *, reasoning: bool, style: PromptStyle = PromptStyle()) -> str | None:
        """The final-answer part of a response: the boxed content in reasoning mode, the whole text otherwise."""
        if reasoning:
            return extract_boxed(response, style.boxed)
        return response.strip()

    def parse_answer(self, answer: str) -> Any:
        """Canonical comparable form of a final answer (overridden per family)."""
        return answer.strip()

    def is_well_formed(self, response: str, sample: Sample, *, reasoning: bool,
                       style: PromptStyle = PromptStyle()) -> bool:
        """The response has the shape the task asks for: exactly one ``\\boxed{}`` in reasoning mode, and a final
        answer the task can parse."""
        if reasoning and len(find_boxed(response)) != 1:
            return False
        final = self.final_answer(response, reasoning=reasoning, style=style)
        return final is not None and self.answer_is_parseable(final, sample)

    def answer_is_parseable(self, answer: str, sample: Sample) -> bool:
        return bool(answer.strip())

    def is_correct(self, response: str, sample: Sample, *, reasoning: bool, style: PromptStyle = PromptStyle()) -> bool:
        """Exact match of the parsed final answer with the sample's answer (None answers are wrong)."""
        final = self.final_answer(response, reasoning=reasoning, style=style)
        if final is None:
            return False
        return self.parse_answer(final) == self.parse_answer(self.answer_text(sample))
