"""The training progress bar: tqdm in optimizer steps on a terminal, one plain line per update elsewhere (see
:mod:`chexone.progress`)."""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from chexone.progress import LineProgress, format_duration, line_interval, progress_mode


class StepProgressBar(TQDMProgressBar):
    """Progress in optimizer steps out of ``trainer.max_steps`` (streaming data has no epoch length to show)."""

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train (steps)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
        self.train_progress_bar.refresh()


class LineProgressBar(ProgressBar):
    """``train: 120/800 steps (15%) | 0:41 elapsed, 2.9 steps/s, ~3:52 left | train/loss 3.21, ...`` at most every
    few seconds, and one line per validation run."""

    def __init__(self, interval: float | None = None) -> None:
        super().__init__()
        self._enabled = True
        self.interval = line_interval() if interval is None else interval
        self._train: LineProgress | None = None
        self._val_batches = 0
        self._val_start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _metrics(self, trainer, pl_module) -> dict[str, Any]:
        return {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}

    def on_train_start(self, trainer, pl_module) -> None:
        self._train = LineProgress(total=trainer.max_steps, desc="train", unit="steps", initial=trainer.global_step,
                                   interval=self.interval, enabled=self._enabled and trainer.is_global_zero)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._train is not None and trainer.global_step > self._train.n:
            self._train.set_postfix(self._metrics(trainer, pl_module))
            self._train.update(trainer.global_step - self._train.n)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._train is not None:
            self._train.close()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_batches, self._val_start = 0, time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._val_batches += 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._enabled and trainer.is_global_zero and not trainer.sanity_checking:
            print(f"validation: {self._val_batches} batches in {format_duration(time.perf_counter() - self._val_start)}"
                  f" at step {trainer.global_step}", file=sys.stderr, flush=True)


def make_progress_bar() -> ProgressBar | None:
    """The bar that suits stderr (None when ``CHEXONE_PROGRESS=off``)."""
    mode = progress_mode()
    if mode == "off":
        return None
    return StepProgressBar(refresh_rate=1) if mode == "bar" else LineProgressBar()


__all__ = ["LineProgressBar", "StepProgressBar", "make_progress_bar"]
