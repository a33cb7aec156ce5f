"""Built-in tasks for the paper's task families (docs/method.md §3, §5). Registered by name in ``chexone.tasks``."""

from __future__ import annotations


from chexone.data.sample import Sample, SampleError
from chexone.tasks.answers import parse_boxes, parse_option_letters, render_options
from chexone.tasks.base import Task


class MultipleChoiceTask(Task):
    """Close-ended VQA: the question lists options as '(A) text'; the answer is one or more option letters."""

    name = "close_vqa"
    family = "multiple_choice"
    rewards = ("vqa",)
    metrics = ("accuracy",)

    def question_text(self, sample: Sample) -> str:
        if not sample.options:
            raise SampleError(f"sample {sample.id!r}: task {self.name!r} needs 'options'")
        return f"{sample.question.strip()}\n{render_options(sample.options)}"

    def answer_text(self, sample: Sample) -> str:
        letters = sorted(parse_option_letters(sample.answer))
        if not letters:
            raise SampleError(f"sample {sample.id!r}: answer {sample.answer!r} names no option letter")
        return ", ".join(f"({x}) {sample.options[ord(x) - 65]}" if ord(x) - 65 < len(sample.options) else f"({x})"
                         for x in letters)

    def parse_answer(self, answer: str) -> frozenset[str]:
        return frozenset(parse_option_letters(answer))

    def answer_is_parseable(self, answer: str, sample: Sample) -> bool:
        letters = parse_option_letters(answer)
        valid = {chr(65 + i) for i in range(len(sample.options))}
        return bool(letters) and letters <= valid


class ViewClassificationTask(MultipleChoiceTask):
    """Projection of the radiograph (PA / AP / lateral) as multiple choice."""

    name = "view_classification"


class TemporalClassificationTask(MultipleChoiceTask):
    """Change of a finding between a prior (first image) and current (second image) study."""

    name = "temporal_classification"


class DiseaseClassificationTask(MultipleChoiceTask):
    """Which disease(s) are present, possibly several letters (long-tail classification)."""

    name = "disease_classification"


class OpenVQATask(Task):
    """Open-ended question with a short free-text answer; compared case- and punctuation-insensitively."""

    name = "open_vqa"
    family = "open_vqa"
    rewards = ()
    metrics = ("exact_match",)

    def parse_answer(self, answer: str) -> str:
        return " ".join(answer.lower().replace(".", " ").replace(",", " ").split())


class FindingsGenerationTask(Task):
    """Write the findings section; an indication in ``meta['indication']`` is prepended to the question."""

    name = "findings_generation"
    family = "report"
    rewards = ("report",)
    metrics = ("bleu2", "bertscore", "semb_score", "radgraph", "radcliq")
    default_question = "Write the findings section of the radiology report for this chest X-ray."

    def question_text(self, sample: Sample) -> str:
        indication = str(sample.meta.get("indication", "") or "").strip()
        q = sample.question.strip()
        return f"Indication: {indication}\n{q}" if indication else q


class ImpressionGenerationTask(FindingsGenerationTask):
    name = "impression_generation"
    default_question = "Write the impression section of the radiology report for this chest X-ray."


class ProgressionGenerationTask(FindingsGenerationTask):
    """Describe the change between a prior (first image) and current (second image) study."""

    name = "progression_generation"
    default_question = ("Compare the current chest X-ray (second image) with the prior study (first image) and "
                        "describe the interval change.")


class GroundingTask(Task):
    """Locate a named finding; the answer is CheXagent boxes on the 0-99 grid or "No {name} detected."."""

    name = "phrase_grounding"
    family = "grounding"
    rewards = ("grounding_iou",)
    metrics = ("iou", "map")
    default_question = "Please locate the following phrase in the image: {phrase}."

    def parse_answer(self, answer: str) -> tuple:
        boxes = parse_boxes(answer)
        if boxes:
            return tuple(sorted(b.coords for b in boxes))
        return answer.strip().lower()

    def answer_is_parseable(self, answer: str, sample: Sample) -> bool:
        text = answer.strip()
        return bool(parse_boxes(text)) or (text.lower().startswith("no ") and text.lower().endswith("detected."))


class AbnormalityGroundingTask(GroundingTask):
    name = "abnormality_grounding"
    default_question = "Locate all regions of {phrase} in this chest X-ray."


BUILTIN_TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        MultipleChoiceTask,
        ViewClassificationTask,
        TemporalClassificationTask,
        DiseaseClassificationTask,
        OpenVQATask,
        FindingsGenerationTask,
        ImpressionGenerationTask,
        ProgressionGenerationTask,
        GroundingTask,
        AbnormalityGroundingTask,
    )
}
