"""chexone's side of ``compare``: the real ``GRPOModule`` / ``SFTModule`` trained by a Lightning ``Trainer``.

The module, its optimizer and schedule (``configure_optimizers``), precision and gradient clipping are exactly what
``python -m chexone.fit`` builds; what differs from ``run_fit`` is only around the module: the data is the workload's
fixed in-memory samples (no shards), and there is no checkpointing, logger or validation. Forced completion lengths:
the rollout engine is handed a prompt encoder that adds ``<|im_end|>`` (EOS) to the tokens it never samples.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from chexone.bench.measure import RunResult, StepClock, mean_split
from chexone.bench.workload import Workload, chexone_config, grpo_samples, prompt_fingerprint, sft_samples
from chexone.model.processor import PromptEncoder


class ForcedLengthEncoder(PromptEncoder):
    """A prompt encoder whose generation never samples EOS, so every completion runs to the length limit."""

    def suppressed_token_ids(self) -> list[int]:
        return sorted({*super().suppressed_token_ids(), self.eos_token_id})


class RecordingEngine:
    """Wraps the module's rollout engine to record the prompts it was given and the completions it produced."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.prompts: list[list[int]] = []
        self.image_tokens: list[int] = []
        self.completion_lengths: list[list[int]] = []  # per step

    def generate(self, model, encoder, batch, settings):
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        self.prompts = [row[m].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
        self.image_tokens = [int((torch.tensor(p) == encoder.image_token_id).sum()) for p in self.prompts]
        roll = self.inner.generate(model, encoder, batch, settings)
        self.completion_lengths.append([int(n) for n in roll.completion_mask.sum(dim=1).tolist()])
        return roll


class _Clock(L.Callback):
    def __init__(self, clock: StepClock, on_train_start=None) -> None:
        self.clock = clock
        self._on_train_start = on_train_start
        self.batches: list[Any] = []

    def on_train_start(self, trainer, pl_module) -> None:
        if self._on_train_start is not None:  # after the module's on_fit_start, which may replace its engine
            self._on_train_start(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.begin()
        self.batches.append(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.end()


def _trainer(cfg: Any, w: Workload, callback: L.Callback, *, grpo: bool) -> L.Trainer:
    """A Lightning Trainer as ``run_fit`` sets one up for one device, minus checkpoints, logger and validation."""
    from chexone.training.run import resolve_precision

    return L.Trainer(
        accelerator="gpu" if w.device == "cuda" else "cpu", devices=1, precision=resolve_precision(cfg, w.device),
        max_steps=cfg.trainer.max_steps, max_epochs=-1, accumulate_grad_batches=1,
        gradient_clip_val=None if grpo else (cfg.optim.max_grad_norm or None),
        logger=False, log_every_n_steps=w.total_steps + 1,  # no metrics written, as TRL's logging_steps
        callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
    )


def _load(cfg: Any, w: Workload):
    from chexone.model import load_pretrained

    return load_pretrained(cfg.model, device_type=w.device)


def run_grpo(w: Workload, model_dir: str, output_dir: str) -> RunResult:
    from chexone.tasks import get_task
    from chexone.training.grpo import GRPOModule

    cfg = chexone_config(w, model_dir, output_dir)
    L.seed_everything(w.seed, verbose=False)
    loaded = _load(cfg, w)
    module = GRPOModule(cfg, loaded, get_task)
    module.encoder = ForcedLengthEncoder(module.processor)
    recorder: list[RecordingEngine] = []

    def wrap_engine(pl_module) -> None:
        recorder.append(RecordingEngine(pl_module.engine))
        pl_module.engine = recorder[0]

    clock = StepClock(w.device)
    samples = grpo_samples(w)
    data = torch.utils.data.DataLoader([s for _ in range(w.total_steps) for s in samples], batch_size=w.prompts,
                                       collate_fn=list, num_workers=0)
    _trainer(cfg, w, _Clock(clock, wrap_engine), grpo=True).fit(module, train_dataloaders=data)
    engine = recorder[0]
    steps = module.history
    return RunResult(
        framework="chexone",
        step_seconds=clock.step_seconds(w.warmup),
        tokens_per_step=[sum(lengths) for lengths in engine.completion_lengths[w.warmup:]],
        completion_lengths=[n for lengths in engine.completion_lengths[w.warmup:] for n in lengths],
        prompt_fingerprint=prompt_fingerprint(engine.prompts),
        prompt_lengths=[len(p) for p in engine.prompts],
        image_tokens=engine.image_tokens,
        split=mean_split([{k[len("time/"):]: v for k, v in h.items() if k.startswith("time/") and k != "time/step"}
                          for h in steps], w.warmup),
    )


def run_sft(w: Workload, model_dir: str, output_dir: str, *, packing: bool | None = None) -> RunResult:
    from chexone.tasks import get_task
    from chexone.training.sft import SFTModule

    cfg = chexone_config(w, model_dir, output_dir, packing=packing)
    L.seed_everything(w.seed, verbose=False)
    module = SFTModule(cfg, _load(cfg, w), get_task)
    clock = StepClock(w.device)
    callback = _Clock(clock)
    samples = sft_samples(w)
    collate = module.make_train_collator()
    data = torch.utils.data.DataLoader([s for _ in range(w.total_steps) for s in samples], batch_size=w.sft_batch,
                                       collate_fn=collate, num_workers=0)
    _trainer(cfg, w, callback, grpo=False).fit(module, train_dataloaders=data)
    first = callback.batches[0]
    mask = first["attention_mask"].bool()
    prompts = [row[m & (labels == -100)].tolist() for row, m, labels in zip(first["input_ids"], mask, first["labels"])]
    return RunResult(
        framework="chexone", variant="" if packing is None else ("packed" if packing else "unpacked"),
        step_seconds=clock.step_seconds(w.warmup),
        tokens_per_step=[int(b["attention_mask"].sum()) for b in callback.batches[w.warmup:]],
        prompt_fingerprint=prompt_fingerprint(prompts),
        prompt_lengths=[int(n) for n in mask.sum(dim=1).tolist()],
        image_tokens=[int((torch.tensor(p) == module.encoder.image_token_id).sum()) for p in prompts],
    )
