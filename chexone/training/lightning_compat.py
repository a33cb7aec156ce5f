"""The Lightning internals chexone touches to keep a newcomer's log free of noise, in one place.

* Lightning 2.6 prints an advertising "Tip" for its cloud logger on every run (through its rank-zero logger): a
  logging filter drops records starting with that marker.
* Lightning's ``WandbLogger`` always passes ``anonymous=None`` to ``wandb.init``, which wandb >= 0.22 answers with
  "WARNING The anonymous setting has no effect and will be removed": the argument is dropped from the logger's
  private ``_wandb_init`` dict before the run starts.
* Resuming in the middle of an epoch, Lightning warns that the dataloader "is not resumable" unless the loader
  object itself has ``state_dict``: chexone's data stream resumes exactly through its data module instead
  (chexone/data/stream_position.py), so that warning would be false; it is filtered by its text.

* Whether the metrics of the coming step reach the loggers: ``trainer._logger_connector.should_update_logs`` (what
  Lightning's own ``LearningRateMonitor`` asks in ``on_train_batch_start``). A ``self.log`` call costs
  Lightning bookkeeping whether or not the value is written, so metrics that only feed the loggers are computed and
  logged on those steps only (:func:`logs_this_step`).

``tests/test_lightning_compat.py`` checks each against the installed versions, so a Lightning release that changes
one shows up there.
"""

from __future__ import annotations

import logging
import re
from typing import Any

TIP_MARKER = "💡 Tip"
#: Loggers Lightning's rank-zero messages are emitted through.
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TIP_MARKER)


_FILTER = _DropTips()


def quiet_lightning_tips() -> None:
    """Drop Lightning's advertising tips (idempotent); warnings and errors are untouched."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


#: The start of Lightning's mid-epoch resume warning (lightning/pytorch/loops/training_epoch_loop.py).
RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended and your dataloader is"


def quiet_resume_warning() -> None:
    """Drop Lightning's "dataloader is not resumable" warning: chexone's training stream resumes exactly."""
    import warnings

    warnings.filterwarnings("ignore", message=re.escape(RESUME_WARNING))


def wandb_logger(**kwargs: Any):
    """``WandbLogger(**kwargs)`` without the deprecated ``anonymous`` argument."""
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(**kwargs)
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


def logs_this_step(trainer: Any) -> bool:
    """Whether Lightning writes the metrics logged during the coming optimizer step to the loggers (every
    ``trainer.log_every_n_steps`` steps, and the last one). True when it cannot tell."""
    connector = getattr(trainer, "_logger_connector", None)
    try:
        return bool(connector.should_update_logs)
    except AttributeError:
        return True


__all__ = ["RESUME_WARNING", "logs_this_step", "quiet_lightning_tips", "quiet_resume_warning", "wandb_logger"]
