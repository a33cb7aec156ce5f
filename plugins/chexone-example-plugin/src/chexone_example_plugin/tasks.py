"""``example_yes_no``: a close-ended question whose options are always (A) Yes / (B) No."""

from __future__ import annotations

from chexone.data.sample import Sample, SampleError
from chexone.tasks.answers import parse_option_letters, render_options
from chexone.tasks.builtin import MultipleChoiceTask

from chexone_example_plugin import TASK_NAME

OPTIONS = ("Yes", "No")
_WORD_TO_LETTER = {"yes": "A", "no": "B"}


class YesNoTask(MultipleChoiceTask):
    """Multiple choice with the fixed option pair (A) Yes / (B) No.

    A sample's ``answer`` may be a letter ("A"/"B") or the word ("yes"/"no"); its ``options`` field is ignored.
    """

    name = TASK_NAME
    family = "multiple_choice"
    #: The built-in multiple-choice reward/metric plus this plugin's own (looked up by name like any other).
    rewards = ("vqa", "example_length_penalty")
    metrics = ("accuracy", "example_answer_length")

    def question_text(self, sample: Sample) -> str:
        return f"{sample.question.strip()}\n{render_options(list(OPTIONS))}"

    def answer_text(self, sample: Sample) -> str:
        letters = sorted(self.parse_answer(sample.answer))
        if len(letters) != 1:
            raise SampleError(f"sample {sample.id!r}: answer {sample.answer!r} is not Yes/No (or A/B)")
        letter = letters[0]
        return f"({letter}) {OPTIONS[ord(letter) - 65]}"

    def parse_answer(self, answer: str) -> frozenset[str]:
        word = answer.strip().strip(".!").lower()
        if word in _WORD_TO_LETTER:
            return frozenset(_WORD_TO_LETTER[word])
        return frozenset(x for x in parse_option_letters(answer) if x in "AB")
