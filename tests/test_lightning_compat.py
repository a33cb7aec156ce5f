"""The Lightning internals chexone/training/lightning_compat.py relies on, checked against the installed versions."""

import logging

import lightning as L

from chexone.training.lightning_compat import TIP_MARKER, quiet_lightning_tips, wandb_logger


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _trainer_messages(monkeypatch=None):
    collect = _Collect()
    root = logging.getLogger("lightning")
    root.addHandler(collect)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False, accelerator="cpu")
    finally:
        root.removeHandler(collect)
        root.setLevel(old_level)
    return collect.messages


def test_lightning_tip_is_dropped_and_other_messages_kept():
    quiet_lightning_tips()
    messages = _trainer_messages()
    assert not any(m.startswith(TIP_MARKER) for m in messages)
    assert any("GPU available" in m for m in messages)  # ordinary info still flows


def test_lightning_still_emits_the_tip_through_its_rank_zero_logger():
    # RELIES ON: the tip is logged through lightning.pytorch.utilities.rank_zero, starting with TIP_MARKER
    name = "lightning.pytorch.utilities.rank_zero"
    logger = logging.getLogger(name)
    saved = list(logger.filters)
    for f in saved:
        logger.removeFilter(f)
    try:
        messages = _trainer_messages()
    finally:
        for f in saved:
            logger.addFilter(f)
    assert any(m.startswith(TIP_MARKER) for m in messages), "Lightning no longer prints its tip: drop the filter"


def test_wandb_logger_passes_no_anonymous_setting(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    # RELIES ON: WandbLogger keeps wandb.init's arguments in the private dict _wandb_init, with anonymous=None
    plain = WandbLogger(save_dir=str(tmp_path), offline=True, project="p")
    assert "anonymous" in plain._wandb_init and plain._wandb_init["anonymous"] is None
    ours = wandb_logger(save_dir=str(tmp_path), offline=True, project="p", name="n")
    assert "anonymous" not in ours._wandb_init and ours._wandb_init["name"] == "n"


def test_the_mid_epoch_resume_warning_still_reads_as_filtered():
    import inspect
    import warnings

    from lightning.pytorch.loops import training_epoch_loop

    from chexone.training.lightning_compat import RESUME_WARNING, quiet_resume_warning

    source = " ".join(line.strip().strip('"') for line in inspect.getsource(training_epoch_loop).splitlines())
    assert RESUME_WARNING.replace(" ", "") in source.replace('"', "").replace(" ", "")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_resume_warning()
        warnings.warn(RESUME_WARNING + " not resumable.", UserWarning)
        warnings.warn("another warning", UserWarning)
    assert [str(w.message) for w in seen] == ["another warning"]


def test_logs_this_step_follows_log_every_n_steps():
    # relies on: Trainer._logger_connector.should_update_logs (what LearningRateMonitor asks in on_train_batch_start)
    import lightning as L
    import torch

    from chexone.training.lightning_compat import logs_this_step

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def on_train_batch_start(self, batch, batch_idx):
            self.seen.append((self.global_step, logs_this_step(self.trainer)))

        def training_step(self, batch, batch_idx):
            self.log("x", float(batch_idx))
            return (self.w * batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    trainer = L.Trainer(max_steps=7, log_every_n_steps=3, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(probe, torch.utils.data.DataLoader(torch.ones(20, 1), batch_size=1))
    # per optimizer step (two micro-batches each): Lightning writes steps 3 and 6 (1-based)
    by_step = {}
    for step, flag in probe.seen:
        by_step.setdefault(step, set()).add(flag)
    assert all(len(flags) == 1 for flags in by_step.values())  # the same answer for every micro-batch of a step
    assert [s for s, flags in sorted(by_step.items()) if True in flags] == [2, 5]
    assert logs_this_step(object()) is True  # nothing to ask: log
