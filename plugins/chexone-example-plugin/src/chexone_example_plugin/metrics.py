"""``example_answer_length``: mean length of the predicted answers, in whitespace-separated words."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class AnswerLength(Metric):
    """Mean number of words per prediction. ``targets`` are only checked for length (the metric ignores them)."""

    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("words", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[str], targets: list[str]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        self.words += sum(len(p.split()) for p in preds)
        self.count += len(preds)

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.words / self.count
