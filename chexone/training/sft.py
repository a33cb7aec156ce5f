"""Stage 1: supervised instruction tuning on the assistant answer (reasoning trace + final answer)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from chexone.data.collate import SFTCollator
from chexone.data.sample import Sample
from chexone.evaluation.predict import Prediction, Predictor
from chexone.evaluation.scoring import majority_baseline_of, score_predictions
from chexone.model.processor import PromptEncoder
from chexone.tasks.base import PromptStyle, Task
from chexone.training.core import ChexoneModule, is_fsdp2, sft_loss
from chexone.training.generation import GenerationSettings
from chexone.training.packing import packed_sft_loss, packing_capacity


def prompt_style(data_cfg: Any) -> PromptStyle:
    return PromptStyle(system_prompt=data_cfg.system_prompt, reasoning_suffix=data_cfg.reasoning_suffix,
                       boxed=data_cfg.boxed)


class SFTModule(ChexoneModule):
    """Teacher-forced cross-entropy on answer tokens; validation adds loss and greedy-decoding accuracy."""

    def __init__(self, cfg: Any, loaded: Any, task_lookup: Callable[[str], Task]):
        super().__init__(cfg, loaded)
        self.task_lookup = task_lookup
        self.encoder = PromptEncoder(self.processor)
        self.style = prompt_style(cfg.data)
        self.val_generation = GenerationSettings(max_new_tokens=cfg.trainer.val_max_new_tokens)
        self._val_loss: list[tuple[float, int]] = []
        self._predictions: list[Prediction] = []

    def make_train_collator(self) -> SFTCollator:
        return SFTCollator(self.encoder, self.task_lookup, style=self.style, max_length=self.cfg.data.max_length,
                           reasoning=self.cfg.data.reasoning)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        if not batch.get("num_samples"):
            # Every sample of this micro-batch was too long (or refused by its task): a zero loss that still touches
            # the graph keeps DDP ranks in step.
            return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
        loss, n_tokens = self.loss(batch)
        self.add_to_step_loss(loss)
        self.throughput.add(int(batch["attention_mask"].sum()), batch["num_samples"])
        bs = batch["num_samples"]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        if self.log_now:
            self.log("train/answer_tokens", float(n_tokens), reduce_fx="sum", batch_size=bs)
        for key in ("skipped_too_long", "skipped_invalid"):
            if batch.get(key):
                self.log(f"train/{key}", float(batch[key]), reduce_fx="sum", batch_size=bs)
        return loss

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """The training loss: on packed rows with ``data.packing`` (equal to the padded batch's, less padding work)."""
        if self.cfg.data.packing and not is_fsdp2(self.model):  # FSDP2 must go through the root module's forward
            return packed_sft_loss(self.model, batch, packing_capacity(self.model, self.cfg.data.pack_length))
        return sft_loss(self.model, batch)

    # ------------------------------------------------------------------ validation
    def _predictor(self) -> Predictor:
        """The evaluation harness's predictor on the live model (greedy, the recipe's prompting)."""
        return Predictor(self.model, self.encoder, self.task_lookup, style=self.style,
                         reasoning=self.cfg.data.reasoning, settings=self.val_generation,
                         max_prompt_length=self.cfg.data.max_length)

    def validation_step(self, samples: list[Sample], batch_idx: int) -> None:
        collate = SFTCollator(self.encoder, self.task_lookup, style=self.style, max_length=self.cfg.data.max_length,
                              reasoning=self.cfg.data.reasoning)
        batch = self._to_device(collate(samples))
        if batch.get("num_samples"):
            loss, n = sft_loss(self.model, batch)
            self._val_loss.append((float(loss) * n, n))
        self._predictions.extend(self._predictor().predict(samples))

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def on_validation_epoch_end(self) -> None:
        preds, self._predictions = self._predictions, []
        losses, self._val_loss = self._val_loss, []
        preds, losses = gather_across_ranks(preds), gather_across_ranks(losses)
        results = validation_results(preds, self.task_lookup, list(self.cfg.trainer.val_metrics))
        if losses:
            results["val/loss"] = sum(s for s, _ in losses) / max(1, sum(n for _, n in losses))
        for key, value in results.items():
            self.log(key, value)  # every rank scored all ranks' predictions: the same values, no reduction
        self.last_validation = results


def gather_across_ranks(items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order (unchanged outside distributed runs). Validation metrics are then
    computed on all held-out samples, identically on every rank (ranks need not hold the same tasks)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def validation_results(preds: list[Prediction], task_lookup: Callable[[str], Task],
                       metrics: list[str]) -> dict[str, float]:
    """``val/<metric>`` over all samples a metric applies to, ``val/<metric>/<task>`` per task, ``val/well_formed``
    and the majority-class baseline of each task family, scored by the evaluation harness's code."""
    results: dict[str, float] = {}
    if not preds:
        return results
    scores = score_predictions(preds, task_lookup, allowed=metrics, n_resamples=0)
    for row, values in scores.rows.items():
        suffix = "" if row == "all" else "/" + row.split("=", 1)[1]
        for name, est in values.items():
            if est.n and est.value == est.value:  # not NaN
                results[f"val/{name}{suffix}"] = est.value
    results["val/well_formed"] = sum(p.well_formed for p in preds) / len(preds)
    for family in sorted({p.family for p in preds}):
        results[f"val/majority_baseline_{family}"] = majority_baseline_of([p for p in preds if p.family == family],
                                                                          task_lookup)
    return results

