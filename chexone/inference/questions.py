"""Questions about radiographs -> answers: the task-aware layer over :class:`InferenceModel`.

A question is either free text (asked verbatim, like the open-VQA task), free text with options (multiple choice,
re-lettered ``(A) ...``), or a registered task by name (``findings_generation``, ``phrase_grounding`` with a phrase,
a plugin task, ...) whose prompt is built exactly as in training, so the model sees the prompts it learnt. Answers carry
the reasoning, the final answer, the task's parsed form and, for grounding, the boxes in pixel coordinates of each
original image.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from chexone.data.sample import Sample, SampleError
from chexone.evaluation.predict import jsonable
from chexone.inference.engine import Conversation, InferenceError, InferenceModel
from chexone.tasks.answers import find_boxed, parse_boxes
from chexone.tasks.base import PromptStyle, Task
from chexone.training.generation import GenerationSettings
from webdata.images import LoadedImage

#: Task used for a free-text question without options / with options.
FREE_TASK = "open_vqa"
CHOICE_TASK = "close_vqa"


@dataclass
class Question:
    """What to ask about which images (``images``: current study last, e.g. [prior, current] or [frontal, lateral])."""

    images: list[LoadedImage]
    question: str | None = None
    task: str | None = None
    options: list[str] = field(default_factory=list)
    #: The finding to locate, for grounding tasks (fills ``{phrase}`` of the task's default question).
    phrase: str | None = None
    #: Clinical indication, prepended by report tasks ("Indication: ...").
    indication: str | None = None
    id: str = "question"


@dataclass
class BoxOut:
    name: str
    #: Corners on the model's 0-99 grid (percent of width / height).
    grid: list[int]
    #: The same box in pixels of the original image (x1, y1, x2, y2; x2/y2 exclusive): grid * size / 100.
    pixels: list[float]


@dataclass
class Answer:
    id: str
    task: str
    family: str
    prompt: str
    reasoning_mode: bool
    #: Everything the model wrote.
    output: str
    #: The reasoning before the final ``\\boxed{}`` (empty in instruction mode or without a box).
    reasoning: str
    #: The final answer: the boxed content in reasoning mode, the whole output otherwise; None = no box found.
    final: str | None
    #: The task's parsed form of the final answer (JSON-friendly).
    parsed: Any
    well_formed: bool
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    #: Grounding only: boxes of the final answer; they refer to the last (current) image.
    boxes: list[BoxOut] = field(default_factory=list)
    image_sizes: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def task_for(question: Question, lookup) -> Task:
    name = question.task or (CHOICE_TASK if question.options else FREE_TASK)
    return lookup(name)


def question_text(question: Question, task: Task) -> str:
    """The question asked: the user's text, else the task's default (with ``{phrase}`` filled)."""
    if question.question and question.question.strip():
        return question.question.strip()
    template = getattr(task, "default_question", None)
    if not template:
        raise InferenceError(f"task {task.name!r} has no default question: give one with --question")
    if "{phrase}" in template:
        if not question.phrase:
            raise InferenceError(f"task {task.name!r} asks to locate a finding: give it with --phrase "
                                 "(e.g. --phrase 'left pleural effusion') or ask with --question")
        return template.format(phrase=question.phrase.strip())
    return template


def build_sample(question: Question, task: Task) -> Sample:
    """The question as a training-schema sample (no reference answer), so the task builds the prompt it learnt."""
    meta: dict[str, Any] = {}
    if question.indication:
        meta["indication"] = question.indication
    if question.phrase:
        meta["ref_name"] = question.phrase
    sample = Sample(id=question.id, task=task.name, question=question_text(question, task), answer="",
                    images=[im.image for im in question.images], options=list(question.options), meta=meta)
    try:
        task.question_text(sample)
    except SampleError as err:
        raise InferenceError(f"question {question.id!r}: {err}") from err
    return sample


def split_reasoning(output: str) -> str:
    """The text before the last ``\\boxed{`` with a trailing "Final Answer:" label removed."""
    at = output.rfind("\\boxed{")
    if at < 0:
        return ""
    head = output[:at].rstrip()
    for label in ("**Final Answer:**", "Final Answer:", "**Final Answer**", "Final answer:"):
        if head.endswith(label):
            head = head[: -len(label)].rstrip()
            break
    return head


def grid_to_pixels(grid: list[int], size: tuple[int, int]) -> list[float]:
    """A 0-99 grid box -> pixels of an image of ``size`` (width, height): the inverse of the builders' rounding."""
    w, h = size
    x1, y1, x2, y2 = grid
    return [round(x1 * w / 100, 1), round(y1 * h / 100, 1), round(x2 * w / 100, 1), round(y2 * h / 100, 1)]


def answer_questions(model: InferenceModel, questions: list[Question], *, reasoning: bool = True,
                     settings: GenerationSettings = GenerationSettings(max_new_tokens=1024),
                     style: PromptStyle = PromptStyle(), seed: int | None = None, lookup=None) -> list[Answer]:
    """Answer questions in one batch (prompts built by their tasks)."""
    if lookup is None:
        from chexone.tasks import get_task as lookup
    prepared = []
    for q in questions:
        task = task_for(q, lookup)
        sample = build_sample(q, task)
        prepared.append((q, task, sample))
    conversations = [Conversation(task.messages(sample, reasoning=reasoning, style=style), list(sample.images))
                     for _, task, sample in prepared]
    start = time.perf_counter()
    completions = model.generate(conversations, settings, seed=seed)
    seconds = (time.perf_counter() - start) / max(1, len(questions))
    answers = []
    for (q, task, sample), c in zip(prepared, completions):
        final = task.final_answer(c.text, reasoning=reasoning, style=style)
        parsed = None
        if final is not None:
            try:
                parsed = jsonable(task.parse_answer(final))
            except Exception:  # noqa: BLE001 - a plugin parser failing on a model's free text is not fatal here
                parsed = None
        boxes = []
        sizes = [list(im.original_size) for im in q.images]
        if task.family == "grounding" and final is not None and q.images:
            size = q.images[-1].original_size
            boxes = [BoxOut(b.name, list(b.coords), grid_to_pixels(list(b.coords), size)) for b in parse_boxes(final)]
        well_formed = final is not None and bool(task.answer_is_parseable(final, sample))
        if reasoning and len(find_boxed(c.text)) != 1:
            well_formed = False
        answers.append(Answer(
            id=q.id, task=task.name, family=task.family,
            prompt=task.user_text(sample, reasoning=reasoning, style=style), reasoning_mode=reasoning,
            output=c.text, reasoning=split_reasoning(c.text) if reasoning else "", final=final, parsed=parsed,
            well_formed=well_formed, finish_reason=c.finish_reason, prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens, seconds=round(seconds, 3), boxes=boxes, image_sizes=sizes))
    return answers
