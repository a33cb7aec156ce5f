"""``example_length_penalty``: penalise over-long responses to the plugin's own task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chexone_example_plugin import TASK_NAME

if TYPE_CHECKING:  # chexone is only needed for the type hint
    from chexone.data.sample import Sample


def length_penalty(responses: list[str], samples: list["Sample"], *, max_words: int = 64,
                   **kwargs: Any) -> list[float | None]:
    """0.0 for responses of at most ``max_words`` words, falling linearly to -1.0 at twice that length.

    Follows chexone's reward interface: one value per response, ``None`` for samples whose task this reward does not
    own (here: every task but ``example_yes_no``), so the trainer skips them. Extra keyword arguments are ignored.
    """
    if len(responses) != len(samples):
        raise ValueError(f"got {len(responses)} responses for {len(samples)} samples")
    if max_words <= 0:
        raise ValueError(f"max_words must be positive, got {max_words}")
    out: list[float | None] = []
    for response, sample in zip(responses, samples):
        if sample.task != TASK_NAME:
            out.append(None)
            continue
        excess = len(response.split()) - max_words
        out.append(0.0 if excess <= 0 else -min(1.0, excess / max_words))
    return out
