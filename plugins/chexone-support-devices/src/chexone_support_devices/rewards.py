"""``lines_tubes_reward``: GRPO reward of the ``lines_tubes`` task.

Weighted F1 between the options a completion chooses and the true ones, in [0, 1]. Partial credit matters for a
multi-label answer (the built-in ``vqa`` reward is all-or-nothing per option set), and a missed or invented
malposition — the finding that needs a nurse at the bedside now — weighs ``malposition_weight`` times as much as any
other option.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chexone.plugin_api import extract_boxed

from chexone_support_devices import TASK_NAME
from chexone_support_devices.labels import MALPOSITIONED, parse_devices, weighted_f1

if TYPE_CHECKING:
    from chexone.plugin_api import Sample


def lines_tubes_reward(responses: list[str], samples: list[Sample], *, boxed: str = "last",
                           reasoning: bool | Sequence[bool] = True, malposition_weight: float = 2.0,
                           **kwargs: Any) -> list[float | None]:
    """One value per response (chexone's reward contract):

    * ``None`` for samples of any other task (the trainer leaves them to their own rewards);
    * 0.0 when the final answer is missing (reasoning mode: no ``\\boxed{}``; ``boxed`` says which box counts) or
      names no option;
    * otherwise the F1 of the chosen options against the sample's, malposition options weighted by
      ``malposition_weight`` (recipe ``kwargs``; 1.0 = plain F1).

    ``reasoning`` is per completion (a list) or one bool; other keyword arguments (``prompts``, ``step``, ...) are
    ignored.
    """
    if len(responses) != len(samples):
        raise ValueError(f"got {len(responses)} responses for {len(samples)} samples")
    if not (isinstance(malposition_weight, (int, float)) and malposition_weight > 0):
        raise ValueError(f"lines_tubes_reward: malposition_weight must be a positive number, "
                         f"got {malposition_weight!r}")
    modes = [bool(reasoning)] * len(samples) if isinstance(reasoning, bool) else [bool(r) for r in reasoning]
    if len(modes) != len(samples):
        raise ValueError(f"got {len(modes)} reasoning flags for {len(samples)} samples")
    weights = {letter: float(malposition_weight) for letter in MALPOSITIONED}
    out: list[float | None] = []
    for response, sample, boxed_mode in zip(responses, samples, modes):
        if sample.task != TASK_NAME:
            out.append(None)
            continue
        final = extract_boxed(response, boxed) if boxed_mode else response
        pred = parse_devices(final)
        truth = parse_devices(sample.answer)
        out.append(weighted_f1(pred, truth, weights) if pred else 0.0)
    return out
