"""``lines_tubes``: which lines and tubes a radiograph shows, and whether they are well positioned.

Multi-label multiple choice over the fixed options of :data:`chexone_support_devices.labels.DEVICE_OPTIONS`
((A) Endotracheal tube: well positioned ... (I) No support device), always rendered in that order, so that letters
mean the same thing in every sample. A sample's ``answer`` holds the letters of every finding present (``"A,E,G"``)
or the option texts; its ``options`` field is empty or equal to the fixed list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chexone.plugin_api import MultipleChoiceTask, SampleError, render_options

from chexone_support_devices import TASK_NAME
from chexone_support_devices.labels import DEVICE_OPTIONS, LETTERS, answer_text, parse_devices

if TYPE_CHECKING:
    from chexone.plugin_api import Sample


class SupportDevicesTask(MultipleChoiceTask):
    """Multi-label multiple choice over a fixed list of support-device findings (see the module docstring)."""

    name = TASK_NAME
    family = "multiple_choice"
    #: Scored in GRPO by this plugin's own reward (and ``format``), not by the built-in ``vqa``.
    rewards = ("lines_tubes_reward",)
    #: Exact-set accuracy (the built-in metric, with this task's answer parsing) and per-device F1.
    metrics = ("accuracy", "lines_tubes_f1")

    @classmethod
    def example_samples(cls, n: int) -> list[Sample]:
        """``n`` valid samples (the first of the generated demo test split), for chexone.testing's checks: its
        generic multiple-choice samples carry Yes/No options, which this task refuses."""
        from chexone_support_devices.demo import demo_sample

        return [demo_sample(i, split="test", image_size=56) for i in range(n)]

    def _check_options(self, sample: Sample) -> None:
        if sample.options and list(sample.options) != list(DEVICE_OPTIONS):
            raise SampleError(f"sample {sample.id!r}: task {self.name!r} uses its fixed options "
                              f"{list(DEVICE_OPTIONS)}; the sample's options {sample.options} differ (leave them "
                              "empty)")

    def question_text(self, sample: Sample) -> str:
        self._check_options(sample)
        return f"{sample.question.strip()}\n{render_options(list(DEVICE_OPTIONS))}"

    def answer_text(self, sample: Sample) -> str:
        self._check_options(sample)
        letters = parse_devices(sample.answer)
        if not letters:
            raise SampleError(f"sample {sample.id!r}: answer {sample.answer!r} names none of the support-device "
                              f"options {', '.join(LETTERS)}")
        if "I" in letters and len(letters) > 1:
            raise SampleError(f"sample {sample.id!r}: answer {sample.answer!r} combines 'No support device' with "
                              "devices")
        return answer_text(letters)

    def parse_answer(self, answer: str) -> frozenset[str]:
        return parse_devices(answer)

    def answer_is_parseable(self, answer: str, sample: Sample) -> bool:
        return bool(parse_devices(answer))
