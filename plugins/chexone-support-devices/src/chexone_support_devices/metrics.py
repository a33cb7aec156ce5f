"""``lines_tubes_f1``: F1 of the chosen support-device options, per sample and per device.

The harness feeds it the final answers and the reference answers (``eval_inputs = ("final", "answer")``, the
default). Per sample it scores the F1 of the two option sets (``score()``: bootstrap CIs, paired tests in
``python -m chexone.evaluate compare``); the reported value is their mean (``primary = "sample_f1"``). ``compute()``
also returns, from summed true/false positive and false negative counts (DDP-mergeable), the F1 of every device
finding (``f1_ett_malpositioned``, ...), their macro average over findings present in the references and the micro
F1. An answer that names no option counts as predicting nothing (F1 0); a reference that names none is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from chexone.plugin_api import PerSampleMetric

from chexone_support_devices.labels import KEYS, LETTERS, parse_devices, weighted_f1


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))


class SupportDevicesF1(PerSampleMetric):
    """Per-sample F1 of the option sets (mean = the headline value) plus per-device F1; see the module docstring."""

    eval_inputs = ("final", "answer")
    primary = "sample_f1"
    higher_is_better = True
    paired_test = "paired_t"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        n = len(LETTERS)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("unparseable", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _pairs(self, preds: Sequence[Any], targets: Sequence[Any]) -> list[tuple[frozenset[str], frozenset[str]]]:
        return [(parse_devices(str(p) if p is not None else ""), parse_devices(str(t))) for p, t in zip(preds, targets)]

    def _score(self, preds: Sequence[Any], targets: Sequence[Any]) -> list[float | None]:
        return [weighted_f1(p, t) if t else None for p, t in self._pairs(preds, targets)]

    def score(self, preds: Sequence[Any], refs: Sequence[Any]) -> list[float | None]:
        """Per-sample F1 (None where the reference names no option); no state is changed."""
        if len(preds) != len(refs):
            raise ValueError(f"got {len(preds)} predictions for {len(refs)} references")
        return self._score(list(preds), list(refs))

    def update(self, preds: Sequence[Any], targets: Sequence[Any]) -> None:
        super().update(preds, targets)
        tp = torch.zeros(len(LETTERS), dtype=torch.float64)
        fp, fn = tp.clone(), tp.clone()
        bad = 0
        for p, t in self._pairs(list(preds), list(targets)):
            if not t:
                continue
            bad += not p
            for i, letter in enumerate(LETTERS):
                tp[i] += letter in p and letter in t
                fp[i] += letter in p and letter not in t
                fn[i] += letter not in p and letter in t
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.unparseable += bad

    def compute(self) -> dict[str, torch.Tensor]:
        per = _f1(self.tp, self.fp, self.fn)
        support = (self.tp + self.fn) > 0
        macro = per[support].mean() if bool(support.any()) else torch.tensor(float("nan"), dtype=torch.float64)
        micro = _f1(self.tp.sum(), self.fp.sum(), self.fn.sum())
        out = {"sample_f1": super().compute(), "macro_f1": macro, "micro_f1": micro,
               "n": self.count.clone(), "unparseable": self.unparseable.clone()}
        out.update({f"f1_{key}": per[i] for i, key in enumerate(KEYS)})
        return out
