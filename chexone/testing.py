"""Conformance kit for plugin authors: tiny samples and images, and the checks chexone applies to a task, a reward
and a metric, to run in your own tests and CI (public API, docs/plugins.md "Testing a plugin: chexone.testing").

::

    from chexone.testing import assert_metric_conforms, assert_reward_conforms, assert_task_conforms

    def test_my_plugin_conforms():          # names resolve through the registries: pip install -e . first
        assert_task_conforms("my_task")
        assert_reward_conforms("my_reward")  # own samples: the tasks declaring it; foreign: built-in tasks
        assert_metric_conforms("my_metric")

**Samples.** :func:`tiny_image` (a deterministic grayscale picture), :func:`make_sample` (one plausible sample of a
task, from its ``family``: multiple_choice -> options and a letter answer, report -> short findings text, grounding ->
a CheXagent box string, open_vqa and others -> short text), :func:`samples_for` (``n`` samples of a task; a task that
needs more than its family gives - a fixed vocabulary, meta keys - defines ``example_samples(n) -> list[Sample]`` as
a classmethod or method, and the kit uses it instead) and :func:`foreign_samples` (built-in tasks of other families).

**Checks** (what ``python -m chexone.plugins check NAME`` runs):

* task: it loads and is registered under its own ``name``; the rewards and metrics it declares exist; it accepts its
  samples; messages render in reasoning and instruction mode with one image placeholder per image (and the
  reasoning suffix); ``target()`` is a non-empty string with exactly one ``\\boxed{}`` in reasoning mode; the parsed
  answer is stable, non-empty and JSON-writable, and each mode's target parses back to it; ``is_well_formed`` and
  ``is_correct`` accept the task's own targets and ``is_correct`` rejects an empty and a wrong answer.
* reward: it takes ``**kwargs``; called with the full context chexone passes plus an unknown keyword, it returns one
  finite number or None per completion (checked by the training code's own value check); it scores its own tasks;
  it returns None for samples of other families (unless it is task-agnostic: no task declares it).
* metric: it builds as the evaluation harness builds it (a plain function becomes a per-sample metric); update +
  compute gives a finite value; two updates equal one on the concatenation and ``reset()`` clears; ``score()``
  (when present) gives one finite number or None per sample whose ``corpus_statistic`` (default: mean) equals
  ``compute()``; two simulated processes merge to the value of one process that saw everything.

Three forms: ``check_task/check_reward/check_metric`` return :class:`CheckResult` rows (pass, fail, skip, n/a);
``task_problems/reward_problems/metric_problems`` return the failures, one line each; ``assert_*_conforms`` raise
``AssertionError`` listing them. A check that cannot run here (a model-backed metric without local weights, a missing
optional package) is skipped with the reason, and the ``assert_*`` functions warn about it; it never passes silently.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from chexone.data.sample import Sample, SampleError
from chexone.tasks.answers import find_boxed, format_boxes
from chexone.tasks.base import PromptStyle, Task

__all__ = [
    "CheckResult",
    "PROBE_KWARG",
    "assert_metric_conforms",
    "assert_reward_conforms",
    "assert_task_conforms",
    "check_metric",
    "check_reward",
    "check_task",
    "foreign_samples",
    "make_sample",
    "metric_problems",
    "reward_problems",
    "samples_for",
    "task_problems",
    "tiny_image",
]

#: A keyword argument no reward knows: the kit passes it so that a reward without ``**kwargs`` fails here, not when
#: chexone adds context.
PROBE_KWARG = "chexone_testing_probe"

#: One built-in task per family: the foreign samples a reward must not score.
_REPRESENTATIVES = ("close_vqa", "open_vqa", "findings_generation", "phrase_grounding")

# ---------------------------------------------------------------------------------------------------------- samples
_MULTIPLE_CHOICE = (
    ("Is there a pleural effusion?", ["Yes", "No"]),
    ("What is the projection of this radiograph?", ["PA", "AP", "Lateral"]),
    ("How has the consolidation changed since the prior study?", ["Improved", "Unchanged", "Worsened"]),
    ("Which finding is present?", ["Cardiomegaly", "Pneumothorax", "Pleural effusion", "No finding"]),
)
_OPEN = (
    ("Which side is the pleural effusion on?", "left"),
    ("What device is seen in this image?", "endotracheal tube"),
    ("What is the size of the heart?", "normal"),
    ("Where is the nodule located?", "right upper lobe"),
)
_REPORTS = (
    "The lungs are clear. No pleural effusion or pneumothorax. The heart size is normal.",
    "Small left pleural effusion with adjacent atelectasis. No pneumothorax.",
    "Moderate cardiomegaly. Mild pulmonary vascular congestion. No focal consolidation.",
    "Right lower lobe opacity concerning for pneumonia. The cardiomediastinal silhouette is normal.",
)
_GROUNDING = (
    ("pleural effusion", [[60, 55, 95, 90]]),
    ("atelectasis", [[10, 60, 40, 85], [62, 58, 90, 88]]),
    ("nodule", [[20, 20, 32, 31]]),
    ("pneumothorax", []),  # a negative: "No pneumothorax detected."
)


def tiny_image(seed: int = 0, size: int = 56) -> Image.Image:
    """A deterministic ``size`` x ``size`` grayscale picture shaped like a chest X-ray (two dark lung fields on a
    brighter body, plus noise): enough to exercise image handling without any file. Same seed, same pixels."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    img = 210.0 - 50.0 * y
    for cx in (0.3, 0.7):
        cx += rng.uniform(-0.03, 0.03)
        r = ((x - cx) / 0.17) ** 2 + ((y - 0.5) / rng.uniform(0.28, 0.34)) ** 2
        img = np.where(r < 1.0, img - 120.0 * np.sqrt(np.clip(1.0 - r, 0.0, None)), img)
    img += rng.normal(0.0, 6.0, img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def _resolve_task(task: str | Task | type[Task]) -> Task:
    if isinstance(task, Task):
        return task
    if isinstance(task, type) and issubclass(task, Task):
        return task()
    if isinstance(task, str):
        from chexone.tasks import get_task

        return get_task(task)
    raise TypeError(f"expected a task name, a Task subclass or a Task instance, got {type(task).__name__}")


def make_sample(task: str | Task | type[Task], index: int = 0, *, images: int = 1, image_size: int = 56,
                **fields: Any) -> Sample:
    """One plausible sample of ``task``, made from its ``family`` (``index`` varies the content, deterministically).

    multiple_choice: a question with 2-4 ``options`` and answer "A" or "B"; report: a short findings text (also in
    ``meta['report']``); grounding: a CheXagent box string (``format_boxes``; index 3 is a negative); open_vqa and
    other families: a short text answer. Even indices carry a short reasoning trace (no box). ``fields`` override
    any ``Sample`` field (``answer=``, ``options=``, ``meta=`` ...).
    """
    unknown = set(fields) - set(Sample.__dataclass_fields__)
    if unknown:
        raise TypeError(f"make_sample: {sorted(unknown)} are not Sample fields "
                        f"({', '.join(Sample.__dataclass_fields__)})")
    t = _resolve_task(task)
    i = int(index)
    family = t.family
    meta: dict[str, Any] = {"question_type": f"kit/{family}", "report": _REPORTS[i % len(_REPORTS)]}
    options: list[str] = []
    if family == "multiple_choice":
        question, options = _MULTIPLE_CHOICE[i % len(_MULTIPLE_CHOICE)]
        options = list(options)
        answer = "AB"[i % 2]
    elif family == "report":
        question = "Write the findings section of the radiology report for this chest X-ray."
        answer = _REPORTS[i % len(_REPORTS)]
        if i % 2:
            meta["indication"] = "Shortness of breath."
    elif family == "grounding":
        name, boxes = _GROUNDING[i % len(_GROUNDING)]
        question = f"Locate the {name} in this chest X-ray."
        answer = format_boxes(name, boxes)
        meta.update(ref_name=name, boxes=[list(b) for b in boxes])
    else:
        question, answer = _OPEN[i % len(_OPEN)]
    reasoning = None if i % 2 else "I compare both lungs, the heart and the pleural spaces with the expected anatomy."
    sample = Sample(id=f"kit-{t.name}-{i}", task=t.name, question=question, answer=answer,
                    images=[tiny_image(seed=1000 * i + k, size=image_size) for k in range(images)], options=options,
                    reasoning=reasoning, dataset="chexone.testing", meta=meta)
    for key, value in fields.items():
        setattr(sample, key, value)
    return sample


def samples_for(task: str | Task | type[Task], n: int = 4) -> list[Sample]:
    """``n`` samples of ``task``: its own ``example_samples(n)`` when it defines one, else :func:`make_sample`."""
    t = _resolve_task(task)
    maker = getattr(t, "example_samples", None)
    if not callable(maker):
        return [make_sample(t, index=i) for i in range(n)]
    samples = list(maker(n))
    bad = [type(s).__name__ for s in samples if not isinstance(s, Sample)]
    if not samples or bad:
        raise TypeError(f"{type(t).__name__}.example_samples({n}) must return a non-empty list of Sample, got "
                        f"{len(samples)} item(s)" + (f" including {bad[0]}" if bad else ""))
    return samples[:n]


def foreign_samples(own: Iterable[str | Task | type[Task]], n: int = 1) -> list[Sample]:
    """``n`` samples of each built-in task family that none of the ``own`` tasks has (close_vqa, open_vqa,
    findings_generation, phrase_grounding): the samples a reward owning ``own`` must return None for."""
    return _other_families(own, n)


def _other_families(own: Iterable[str | Task | type[Task]], n: int = 1) -> list[Sample]:
    # foreign_samples under another name: check_reward's parameter of that name shadows the function
    tasks = [_resolve_task(t) for t in own]
    families, names = {t.family for t in tasks}, {t.name for t in tasks}
    out: list[Sample] = []
    for name in _REPRESENTATIVES:
        t = _resolve_task(name)
        if t.family not in families and name not in names:
            out += [make_sample(t, index=i) for i in range(n)]
    return out


# ---------------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class CheckResult:
    """One check of one task, reward or metric."""

    #: "task" | "reward" | "metric"
    kind: str
    name: str
    #: What was checked, e.g. "one finite number or None per completion".
    check: str
    #: "pass" | "fail" | "skip" (could not run here, or a check it needs failed) | "n/a" (does not apply)
    status: str
    #: Why it failed, was skipped or does not apply (one line); "" when it passed.
    detail: str = ""

    @property
    def problem(self) -> str:
        """The failure as one self-contained line."""
        return f"{self.kind} {self.name!r}: {self.check}: {self.detail}"

    def line(self) -> str:
        """How ``python -m chexone.plugins check`` prints it."""
        text = f"{self.status.upper():<4}  {self.kind} {self.name}: {self.check}"
        return f"{text}: {self.detail}" if self.detail else text


def _one_line(text: Any, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _describe_error(err: BaseException) -> str:
    return _one_line(f"{type(err).__name__}: {err}")


def _environment_error(err: BaseException) -> bool:
    """Missing local weights or an optional package: the environment's limit, not the plugin's fault."""
    from chexone.metrics._common import MissingExtraError, MissingWeightsError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (MissingExtraError, MissingWeightsError)):
            return True
        seen = seen.__cause__
    return False


class _Run:
    """Runs named checks in order: an exception is a failure naming it, an environment error skips the rest, and a
    check whose prerequisite failed is skipped (so one fault gives one failure line)."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        self.results: list[CheckResult] = []
        self._not_ok: set[str] = set()
        self._blocked = self._blocked_by = ""

    def add(self, check: str, status: str, detail: str = "") -> None:
        self.results.append(CheckResult(self.kind, self.name, check, status, _one_line(detail) if detail else ""))
        if status in ("fail", "skip"):
            self._not_ok.add(check)

    def check(self, label: str, fn: Callable[[], str | None], needs: Sequence[str] = ()) -> bool:
        if self._blocked:
            self.add(label, "skip", f"not run: {self._blocked_by!r} could not run here")
            return False
        missing = [n for n in needs if n in self._not_ok]
        if missing:
            self.add(label, "skip", f"not run: '{missing[0]}' did not pass")
            return False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchmetrics' advice etc.; the checks report what matters
                problem = fn()
        except _NotApplicable as na:
            self.add(label, "n/a", str(na))
            return True
        except Exception as err:  # noqa: BLE001 - every failure becomes one line naming the check
            if _environment_error(err):
                self._blocked, self._blocked_by = f"cannot run here: {_describe_error(err)}", label
                self.add(label, "skip", self._blocked)
                return False
            problem = f"raised {_describe_error(err)}"
        self.add(label, "fail" if problem else "pass", problem or "")
        return not problem


class _NotApplicable(Exception):
    """Raised by a check that does not apply to this object (the reason is its message)."""


def _failures(results: list[CheckResult]) -> list[str]:
    return [r.problem for r in results if r.status == "fail"]


def _raise_failures(results: list[CheckResult]) -> None:
    for r in results:
        if r.status == "skip" and r.detail.startswith("cannot run here"):
            warnings.warn(f"chexone.testing: {r.kind} {r.name!r}: {r.check}: {r.detail}", UserWarning, stacklevel=3)
    failed = [r for r in results if r.status == "fail"]
    if failed:
        head = f"{failed[0].kind} {failed[0].name!r} does not conform ({len(failed)} problem(s)):"
        raise AssertionError("\n".join([head] + [f"  - {r.check}: {r.detail}" for r in failed]))


def _declaring_tasks(attribute: str, name: str) -> list[str]:
    """Registered tasks whose ``rewards``/``metrics`` list ``name`` (tasks that cannot load are left out: their own
    check reports them)."""
    from chexone.registry import TASKS
    from chexone.tasks import get_task

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for task_name in TASKS.names():
            try:
                task = get_task(task_name)
            except Exception:  # noqa: BLE001 - reported by listing / by checking that task
                continue
            if name in tuple(getattr(task, attribute, ()) or ()):
                out.append(task_name)
    return out


def _mode(reasoning: bool) -> str:
    return "reasoning" if reasoning else "instruction"


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    try:
        return len(value) == 0
    except TypeError:
        return False


def _wrong_answer(task: Task, samples: Sequence[Sample], sample: Sample) -> str | None:
    """The answer text of another sample that parses differently from ``sample``'s (None if all agree)."""
    own = task.parse_answer(task.answer_text(sample))
    for other in samples:
        if other is sample:
            continue
        try:
            text = task.answer_text(other)
        except SampleError:
            continue
        if task.parse_answer(text) != own:
            return text
    return None


# ---------------------------------------------------------------------------------------------------------- tasks
def _messages_problem(messages: Any, sample: Sample, reasoning: bool, style: PromptStyle) -> str | None:
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return f"messages() returned {type(messages).__name__}, not a non-empty list of {{'role', 'content'}} dicts"
    images, texts = 0, []
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant"):
            return f"a message has role {m.get('role')!r} (system, user or assistant)"
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            return f"a {m['role']} message's content is {type(content).__name__}, not a string or a list of parts"
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                images += 1
            elif kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                return f"content part {part!r:.60} is neither {{'type': 'image'}} nor {{'type': 'text', 'text': str}}"
    if images != len(sample.images):
        return (f"{images} image placeholder(s) for {len(sample.images)} image(s): the processor would pair images "
                "with the wrong tokens")
    if messages[-1].get("role") != "user":
        return f"the last message is {messages[-1].get('role')!r}; the prompt must end with the user's turn"
    user = " ".join(texts)
    if not user.strip():
        return "the prompt has no text"
    if reasoning and style.reasoning_suffix and style.reasoning_suffix not in user:
        return (f"the reasoning-mode prompt lacks the reasoning suffix {style.reasoning_suffix!r} "
                "(data.reasoning_suffix); without it the model is not asked for a \\boxed{} answer")
    return None


_T_LOADS = "loads, registered under its own name"
_T_DECLARED = "declared rewards and metrics are registered"
_T_SAMPLES = "accepts its samples"
_T_MESSAGES = "builds messages in both modes (one image placeholder per image)"
_T_TARGETS = "builds targets in both modes (one \\boxed{} in reasoning mode)"
_T_PARSES = "parses its own targets back to its answer"
_T_JUDGES = "is_well_formed/is_correct accept its targets, reject empty and wrong answers"


def check_task(task: str | Task | type[Task], samples: Sequence[Sample] | None = None, *, n: int = 4,
               style: PromptStyle = PromptStyle()) -> list[CheckResult]:
    """The task checks (module docstring) on ``samples`` (default: :func:`samples_for` the task, ``n`` of them)."""
    label = task if isinstance(task, str) else getattr(task, "name", type(task).__name__)
    run = _Run("task", str(label))
    st: dict[str, Any] = {}

    def loads() -> str | None:
        st["task"] = t = _resolve_task(task)
        if isinstance(task, str) and t.name != task:
            return f"its name attribute is {t.name!r} but it is registered as {task!r}; set name = {task!r}"
        if not isinstance(t.family, str) or not t.family.strip():
            return f"family is {t.family!r}; set it to a non-empty string (multiple_choice, open_vqa, report, ...)"
        return None

    def declared() -> str | None:
        from chexone.registry import METRICS, REWARDS, RegistryError

        t = st["task"]
        for attribute, registry in (("rewards", REWARDS), ("metrics", METRICS)):
            names = getattr(t, attribute, ())
            if isinstance(names, str) or not all(isinstance(x, str) for x in names):
                return f"{attribute} = {names!r}; it must be a tuple of names, e.g. ({names!r},)"
            for x in names:
                try:
                    registry.origin(x)
                except RegistryError as err:
                    return f"it declares {registry.kind} {x!r} in {attribute}, which is not registered: {err}"
        return None

    def accepts() -> str | None:
        t = st["task"]
        generated = samples is None
        st["samples"] = ss = list(samples) if samples is not None else samples_for(t, n)
        if not ss:
            return "no samples to check"
        for s in ss:
            if s.task != t.name:
                return f"sample {s.id!r} has task {s.task!r}, not {t.name!r}"
            try:
                t.answer_text(s)
                t.question_text(s)
            except SampleError as err:
                if generated and not callable(getattr(t, "example_samples", None)):
                    return (f"it refuses the kit's generated {t.family} sample {s.id!r} ({err}); give the task an "
                            "example_samples(n) classmethod returning valid samples (docs/plugins.md)")
                return f"it refuses sample {s.id!r}: {err}"
        return None

    def messages() -> str | None:
        t = st["task"]
        for s in st["samples"]:
            for reasoning in (True, False):
                problem = _messages_problem(t.messages(s, reasoning=reasoning, style=style), s, reasoning, style)
                if problem:
                    return f"sample {s.id!r}, {_mode(reasoning)} mode: {problem}"
        return None

    def targets() -> str | None:
        t = st["task"]
        for s in st["samples"]:
            for reasoning in (True, False):
                target = t.target(s, reasoning=reasoning)
                if not isinstance(target, str) or not target.strip():
                    return (f"target() of sample {s.id!r} in {_mode(reasoning)} mode is {target!r}, not a non-empty "
                            "string")
                boxes = len(find_boxed(target))
                if reasoning and boxes != 1:
                    return (f"the reasoning-mode target of sample {s.id!r} has {boxes} \\boxed{{}} (exactly one: "
                            f"answers are read from it): {target[:80]!r}")
        return None

    def parses() -> str | None:
        from chexone.evaluation.predict import jsonable

        t = st["task"]
        for s in st["samples"]:
            text = t.answer_text(s)
            expected, again = t.parse_answer(text), t.parse_answer(text)
            if expected != again:
                return f"parse_answer({text!r}) is not stable: {expected!r}, then {again!r}"
            if _is_empty(expected):
                return (f"parse_answer(answer_text(sample {s.id!r})) = parse_answer({text!r}) is empty ({expected!r}): "
                        "the task cannot read its own answer")
            try:
                json.dumps(jsonable(expected))
            except (TypeError, ValueError):
                return (f"parse_answer({text!r}) = {expected!r} cannot be written to samples.jsonl; return a str, "
                        "number, tuple, list, set or dict")
            for reasoning in (True, False):
                target = t.target(s, reasoning=reasoning)
                final = t.final_answer(target, reasoning=reasoning, style=style)
                got = None if final is None else t.parse_answer(final)
                if got != expected:
                    return (f"the {_mode(reasoning)}-mode target of sample {s.id!r} does not parse back to its answer: "
                            f"final answer {final!r} parses to {got!r}, answer_text {text!r} to {expected!r}")
        return None

    def judges() -> str | None:
        t = st["task"]
        ss = st["samples"]
        for s in ss:
            wrong = _wrong_answer(t, ss, s)
            for reasoning in (True, False):
                target = t.target(s, reasoning=reasoning)
                mode = _mode(reasoning)
                if not t.is_well_formed(target, s, reasoning=reasoning, style=style):
                    return f"is_well_formed() rejects the {mode}-mode target of sample {s.id!r}: {target[:80]!r}"
                if not t.is_correct(target, s, reasoning=reasoning, style=style):
                    return f"is_correct() rejects the {mode}-mode target of sample {s.id!r}: {target[:80]!r}"
                if t.is_correct("", s, reasoning=reasoning, style=style):
                    return f"is_correct() accepts an empty {mode}-mode response for sample {s.id!r}"
                if wrong is not None:
                    response = f"Looking at the image.\n\\boxed{{{wrong}}}" if reasoning else wrong
                    if t.is_correct(response, s, reasoning=reasoning, style=style):
                        return (f"is_correct() accepts the wrong {mode}-mode answer {wrong!r} for sample {s.id!r} "
                                f"(answer {t.answer_text(s)!r})")
        return None

    run.check(_T_LOADS, loads)
    run.check(_T_DECLARED, declared, needs=[_T_LOADS])
    run.check(_T_SAMPLES, accepts, needs=[_T_LOADS])
    run.check(_T_MESSAGES, messages, needs=[_T_SAMPLES])
    run.check(_T_TARGETS, targets, needs=[_T_SAMPLES])
    run.check(_T_PARSES, parses, needs=[_T_SAMPLES])
    run.check(_T_JUDGES, judges, needs=[_T_PARSES])
    return run.results


def task_problems(task: str | Task | type[Task], samples: Sequence[Sample] | None = None, *, n: int = 4,
                  style: PromptStyle = PromptStyle()) -> list[str]:
    """The failures of :func:`check_task`, one line each ([] = conforms)."""
    return _failures(check_task(task, samples, n=n, style=style))


def assert_task_conforms(task: str | Task | type[Task], samples: Sequence[Sample] | None = None, *, n: int = 4,
                         style: PromptStyle = PromptStyle()) -> None:
    """Raise ``AssertionError`` listing every failed task check (see the module docstring)."""
    _raise_failures(check_task(task, samples, n=n, style=style))


# ---------------------------------------------------------------------------------------------------------- rewards
def _completions(sample: Sample, siblings: Sequence[Sample]) -> list[tuple[str, bool, str]]:
    """(completion, reasoning mode, prompt) for one sample, like a GRPO group: its own target (reasoning and
    instruction mode), a wrong boxed answer, an answer without a box and an empty completion."""
    try:
        from chexone.tasks import get_task

        t = get_task(sample.task)
        right, plain = t.target(sample, reasoning=True), t.target(sample, reasoning=False)
        wrong = _wrong_answer(t, siblings, sample) or "none of the above"
        prompts = {r: t.user_text(sample, reasoning=r, style=PromptStyle()) for r in (True, False)}
    except Exception:  # noqa: BLE001 - a sample of an unregistered task: generic completions
        right, plain, wrong = f"Reasoning.\n\\boxed{{{sample.answer}}}", sample.answer, "none of the above"
        prompts = {True: sample.question, False: sample.question}
    return [(right, True, prompts[True]), (f"Looking at the image.\n\\boxed{{{wrong}}}", True, prompts[True]),
            ("I cannot tell from this image.", True, prompts[True]), ("", True, prompts[True]),
            (plain, False, prompts[False])]


def _call_reward(fn: Callable[..., Any], samples: Sequence[Sample], kwargs: dict[str, Any]
                 ) -> tuple[list[Any], list[str], list[Sample]]:
    """Call ``fn`` as GRPO does, plus :data:`PROBE_KWARG`; returns (values, completions, samples per completion)."""
    texts, modes, prompts, owners = [], [], [], []
    for s in samples:
        for text, reasoning, prompt in _completions(s, [o for o in samples if o.task == s.task]):
            texts.append(text)
            modes.append(reasoning)
            prompts.append(prompt)
            owners.append(s)
    context = {"boxed": "last", "prompts": prompts, "reasoning": modes, "step": 0}
    values = fn(texts, owners, **{**context, **kwargs, PROBE_KWARG: True})
    return values, texts, owners


def _values_problem(values: Any, texts: Sequence[str], owners: Sequence[Sample]) -> tuple[list[float | None], str]:
    """The values as floats/None, and what is wrong with them ("" = nothing), with the training code's own check."""
    from chexone.training.reward_set import _as_reward_value

    try:
        values = list(values)
    except TypeError:
        return [], f"returned {type(values).__name__}, not a list of values"
    if len(values) != len(texts):
        return [], f"returned {len(values)} values for {len(texts)} completions"
    out: list[float | None] = []
    bad: list[str] = []
    for i, (value, text, sample) in enumerate(zip(values, texts, owners)):
        number, problem = _as_reward_value(value)
        out.append(number)
        if problem:
            bad.append(f"{problem} for completion {i} ({text[:60]!r}, sample {sample.id!r} of task {sample.task})")
    if bad:
        return out, bad[0] + (f"; {len(bad) - 1} more bad value(s)" if len(bad) > 1 else "")
    return out, ""


_R_LOADS = "loads"
_R_KWARGS = "accepts **kwargs"
_R_VALUES = "one finite number or None per completion (full context + an unknown keyword)"
_R_OWN = "scores its own tasks"
_R_FOREIGN = "None for samples of other tasks"


def check_reward(reward: str | Callable[..., Any], own_samples: Sequence[Sample] | None = None,
                 foreign_samples: Sequence[Sample] | None = None, *, task_agnostic: bool | None = None,
                 kwargs: dict[str, Any] | None = None, n: int = 3) -> list[CheckResult]:
    """The reward checks (module docstring).

    ``own_samples`` default to ``n`` samples of each task that declares the reward (``Task.rewards``); a reward no
    task declares is applied to every sample, so it is task-agnostic and checked on one sample per built-in family.
    ``foreign_samples`` default to :func:`foreign_samples` of the own samples' tasks; ``task_agnostic=True`` skips
    that check. ``kwargs`` are the recipe's ``grpo.rewards[].kwargs``. A reward given as an object needs
    ``own_samples``.
    """
    if own_samples is None and not isinstance(reward, str):
        raise ValueError("check_reward: pass own_samples (samples of the tasks it scores) when checking a reward "
                         "object rather than a registered name")
    label = reward if isinstance(reward, str) else getattr(reward, "__name__", type(reward).__name__)
    run = _Run("reward", str(label))
    st: dict[str, Any] = {"agnostic": task_agnostic}
    kwargs = dict(kwargs or {})

    def loads() -> str | None:
        if isinstance(reward, str):
            from chexone.registry import REWARDS

            st["fn"] = REWARDS.get(reward)
        else:
            st["fn"] = reward
        return None if callable(st["fn"]) else f"{type(st['fn']).__name__} is not callable"

    def signature() -> str | None:
        try:
            sig = inspect.signature(st["fn"])
        except (TypeError, ValueError):
            raise _NotApplicable("its signature cannot be inspected; the call below checks it") from None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
            return None
        return (f"its signature {sig} has no **kwargs; chexone calls reward(responses, samples, boxed=..., "
                "prompts=..., reasoning=..., step=..., **recipe_kwargs) and may pass more: add **kwargs")

    def values() -> str | None:
        own = list(own_samples) if own_samples is not None else None
        if own is None:
            tasks = _declaring_tasks("rewards", str(reward))
            if tasks:
                own = [s for t in tasks for s in samples_for(t, n)]
            else:  # no task declares it: chexone applies it to every sample (docs/plugins.md)
                own = _other_families([])
                st["agnostic"] = True if task_agnostic is None else task_agnostic
        if not own:
            return "no own samples to score"
        st["own"] = own
        raw, texts, owners = _call_reward(st["fn"], own, kwargs)
        st["values"], problem = _values_problem(raw, texts, owners)
        st["owners"] = owners
        return problem or None

    def scores_own() -> str | None:
        if all(v is None for v in st["values"]):
            tasks = sorted({s.task for s in st["owners"]})
            return (f"it returned None for every completion of its own task(s) {', '.join(tasks)}: it scores nothing "
                    "(does it compare sample.task with the right name?)")
        return None

    def none_for_others() -> str | None:
        if st["agnostic"]:
            raise _NotApplicable("task-agnostic: no task declares it, so chexone applies it to every sample")
        others = list(foreign_samples) if foreign_samples is not None else \
            _other_families(sorted({s.task for s in st["own"]}))
        if not others:
            raise _NotApplicable("no foreign samples (its tasks cover every built-in family)")
        raw, texts, owners = _call_reward(st["fn"], others, kwargs)
        vals, problem = _values_problem(raw, texts, owners)
        if problem:
            return problem
        for i, (v, s) in enumerate(zip(vals, owners)):
            if v is not None:
                return (f"it returned {v!r} for completion {i} of sample {s.id!r} (task {s.task}), a task it does not "
                        "own; return None for samples of other tasks")
        return None

    run.check(_R_LOADS, loads)
    run.check(_R_KWARGS, signature, needs=[_R_LOADS])
    run.check(_R_VALUES, values, needs=[_R_KWARGS])
    run.check(_R_OWN, scores_own, needs=[_R_VALUES])
    run.check(_R_FOREIGN, none_for_others, needs=[_R_VALUES])
    return run.results


def reward_problems(reward: str | Callable[..., Any], own_samples: Sequence[Sample] | None = None,
                    foreign_samples: Sequence[Sample] | None = None, *, task_agnostic: bool | None = None,
                    kwargs: dict[str, Any] | None = None, n: int = 3) -> list[str]:
    """The failures of :func:`check_reward`, one line each ([] = conforms)."""
    return _failures(check_reward(reward, own_samples, foreign_samples, task_agnostic=task_agnostic, kwargs=kwargs,
                                  n=n))


def assert_reward_conforms(reward: str | Callable[..., Any], own_samples: Sequence[Sample] | None = None,
                           foreign_samples: Sequence[Sample] | None = None, *, task_agnostic: bool | None = None,
                           kwargs: dict[str, Any] | None = None, n: int = 3) -> None:
    """Raise ``AssertionError`` listing every failed reward check (see :func:`check_reward`)."""
    _raise_failures(check_reward(reward, own_samples, foreign_samples, task_agnostic=task_agnostic, kwargs=kwargs,
                                 n=n))


# ---------------------------------------------------------------------------------------------------------- metrics
class _One:
    """A registry of one object, so that a metric given as an object is built exactly like a registered one."""

    def __init__(self, obj: Any):
        self.obj = obj

    def get(self, name: str) -> Any:
        return self.obj


def _default_task_for(inputs: tuple[str, str]) -> str:
    """A built-in task whose samples carry what a metric with these ``eval_inputs`` reads."""
    _, ref = inputs
    return {"options": "close_vqa", "report": "findings_generation"}.get(ref, "open_vqa")


def _metric_data(task: Task, inputs: tuple[str, str], n: int) -> tuple[list[Any], list[Any]]:
    """Predictions and references as the harness feeds them (``eval_inputs``): two of three predictions right."""
    samples = samples_for(task, n)
    answers = [task.answer_text(s) for s in samples]
    wrong = [_wrong_answer(task, samples, s) or a for s, a in zip(samples, answers)]
    pred_kind, ref_kind = inputs
    if pred_kind == "response":
        preds: list[Any] = [task.target(s, reasoning=True) if i % 3 != 1 else f"Looking at the image.\n\\boxed{{{w}}}"
                            for i, (s, w) in enumerate(zip(samples, wrong))]
    elif pred_kind == "samples":
        preds = [[a, a, w] if i % 3 != 1 else [w, a, w] for i, (a, w) in enumerate(zip(answers, wrong))]
    else:
        preds = [a if i % 3 != 1 else w for i, (a, w) in enumerate(zip(answers, wrong))]
    if ref_kind == "report":
        refs: list[Any] = [s.meta.get("report") or s.answer for s in samples]
    elif ref_kind == "options":
        refs = [list(s.options) for s in samples]
    else:
        refs = answers
    return preds, refs


def _as_tensor(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double()
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    return None


def _same_value(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and \
            all(_same_value(a[k], b[k]) for k in a)
    ta, tb = _as_tensor(a), _as_tensor(b)
    if ta is None or tb is None:
        return a == b
    return ta.shape == tb.shape and bool(torch.allclose(ta, tb, rtol=1e-6, atol=1e-9, equal_nan=True))


def _show(value: Any) -> str:
    from chexone.evaluation.scoring import details

    try:
        return _one_line(json.dumps(details(value)), 160)
    except (TypeError, ValueError):
        return _one_line(repr(value), 160)


_M_BUILDS = "builds as the evaluation harness builds it"
_M_COMPUTES = "update() then compute() gives a finite value"
_M_ACCUMULATES = "accumulates: two updates == one on the concatenation; reset() clears"
_M_SCORES = "score(): one finite number or None per sample, agreeing with compute()"
_M_MERGES = "merges across 2 processes to the single-process value"


def check_metric(metric: str | Any, preds: Sequence[Any] | None = None, refs: Sequence[Any] | None = None, *,
                 task: str | None = None, kwargs: dict[str, Any] | None = None, n: int = 6) -> list[CheckResult]:
    """The metric checks (module docstring) on ``preds``/``refs`` (default: ``n`` samples of ``task``, in the form
    the metric's ``eval_inputs`` asks for; ``task`` defaults to a task declaring the metric, else a built-in task that
    has what it reads). ``kwargs`` are its ``eval.metric_kwargs``."""
    from chexone.evaluation.scoring import build_metric, primary_value

    label = metric if isinstance(metric, str) else getattr(metric, "__name__", type(metric).__name__)
    run = _Run("metric", str(label))
    st: dict[str, Any] = {}
    kwargs = dict(kwargs or {})

    def build(**extra: Any) -> Any:
        registry = None if isinstance(metric, str) else _One(metric)
        return build_metric(str(label), st["task"], {**kwargs, **extra}, registry)

    def builds() -> str | None:
        from chexone.registry import METRICS

        obj = METRICS.get(metric) if isinstance(metric, str) else metric
        inputs = tuple(getattr(obj, "eval_inputs", ("final", "answer")))
        if task is not None:
            st["task"] = task
        else:
            declaring = _declaring_tasks("metrics", metric) if isinstance(metric, str) else []
            st["task"] = declaring[0] if declaring else _default_task_for(inputs)  # type: ignore[arg-type]
        try:
            st["metric"] = build()
        except TypeError as err:
            if str(err).startswith(f"metric {str(label)!r}"):
                return str(err)
            raise
        if preds is None or refs is None:
            from chexone.evaluation.scoring import metric_inputs

            st["preds"], st["refs"] = _metric_data(_resolve_task(st["task"]), metric_inputs(st["metric"]), n)
        else:
            st["preds"], st["refs"] = list(preds), list(refs)
            if len(st["preds"]) != len(st["refs"]) or len(st["preds"]) < 2:
                raise ValueError(f"give at least 2 predictions and as many references (got {len(st['preds'])} and "
                                 f"{len(st['refs'])})")
        return None

    def computes() -> str | None:
        m = st["metric"]
        m.update(st["preds"], st["refs"])
        st["value"] = value = m.compute()
        st["primary"] = primary = primary_value(m, value)
        if not math.isfinite(primary):
            return (f"compute() gave {_show(value)} after update() on {len(st['preds'])} {st['task']} samples: the "
                    "headline value must be a finite number")
        return None

    def accumulates() -> str | None:
        m = build()
        p, r = st["preds"], st["refs"]
        k = len(p) // 2
        m.update(p[:k], r[:k])
        m.update(p[k:], r[k:])
        twice = m.compute()
        if not _same_value(twice, st["value"]):
            return (f"two update() calls gave {_show(twice)}, one update() on the same samples {_show(st['value'])}: "
                    "accumulate in the states, do not overwrite them")
        m.reset()
        m.update(p, r)
        after = m.compute()
        if not _same_value(after, st["value"]):
            return (f"after reset() and update() it gave {_show(after)}, a fresh metric {_show(st['value'])}: keep "
                    "every state in add_state(...) so reset() clears it")
        return None

    def scores() -> str | None:
        m = st["metric"]
        if not callable(getattr(m, "score", None)):
            raise _NotApplicable("no score(): a corpus-only metric (bootstrap by recomputing, no paired tests)")
        p = st["preds"]
        got = list(m.score(p, st["refs"]))
        if len(got) != len(p):
            return f"score() returned {len(got)} values for {len(p)} samples"
        kept: list[float] = []
        for i, v in enumerate(got):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)):
                return f"score() returned {v!r} for sample {i}; give a finite number, or None when not scorable"
            kept.append(float(v))
        if not kept:
            return "score() returned None for every sample"
        statistic = getattr(m, "corpus_statistic", None) or np.mean
        corpus = float(statistic(np.array(kept, dtype=np.float64), axis=-1))
        if not math.isclose(corpus, st["primary"], rel_tol=1e-6, abs_tol=1e-9):
            how = getattr(statistic, "__name__", "corpus_statistic")
            return (f"the corpus value of score() ({corpus:.6g}, by {how})"
                    f" differs from compute() ({st['primary']:.6g}): reports and paired tests would disagree with the "
                    "metric; set corpus_statistic or make score() match update()")
        return None

    def merges() -> str | None:
        from torchmetrics import Metric

        from chexone.metrics.testing import simulated_ranks

        if not isinstance(st["metric"], Metric):
            return (f"{type(st['metric']).__name__} is not a torchmetrics.Metric, so its state cannot be merged across "
                    "processes; subclass torchmetrics.Metric with add_state(...) states, or "
                    "chexone.plugin_api.PerSampleMetric")

        def factory(**sync: Any) -> Any:
            m = build()
            for key, value in sync.items():
                setattr(m, key, value)
            m.sync_on_compute = True  # build_metric turns syncing off for per-process scoring; the check needs it
            m._to_sync = True
            return m

        p, r = st["preds"], st["refs"]
        k = len(p) // 2
        first, second = simulated_ranks(factory, 2)
        first.update(p[:k], r[:k])
        second.update(p[k:], r[k:])
        merged = first.compute()
        if not _same_value(merged, st["value"]):
            return (f"two processes merged to {_show(merged)}, one process that saw every sample gave "
                    f"{_show(st['value'])}: keep every state in add_state(..., dist_reduce_fx=...)")
        return None

    run.check(_M_BUILDS, builds)
    run.check(_M_COMPUTES, computes, needs=[_M_BUILDS])
    run.check(_M_ACCUMULATES, accumulates, needs=[_M_COMPUTES])
    run.check(_M_SCORES, scores, needs=[_M_COMPUTES])
    run.check(_M_MERGES, merges, needs=[_M_COMPUTES])
    return run.results


def metric_problems(metric: str | Any, preds: Sequence[Any] | None = None, refs: Sequence[Any] | None = None, *,
                    task: str | None = None, kwargs: dict[str, Any] | None = None, n: int = 6) -> list[str]:
    """The failures of :func:`check_metric`, one line each ([] = conforms)."""
    return _failures(check_metric(metric, preds, refs, task=task, kwargs=kwargs, n=n))


def assert_metric_conforms(metric: str | Any, preds: Sequence[Any] | None = None, refs: Sequence[Any] | None = None,
                           *, task: str | None = None, kwargs: dict[str, Any] | None = None, n: int = 6) -> None:
    """Raise ``AssertionError`` listing every failed metric check (see :func:`check_metric`)."""
    _raise_failures(check_metric(metric, preds, refs, task=task, kwargs=kwargs, n=n))

