"""Stage 1: supervised instruction tuning on the assistant answer (reasoning trace + final answer)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Callable

import torch

from chexone.data.collate import PromptCollator, SFTCollator
from chexone.data.sample import Sample
from chexone.model.processor import PromptEncoder
from chexone.tasks.base import PromptStyle, Task
from chexone.training.core import ChexoneModule, sft_loss
from chexone.training.generation import GenerationSettings, generate


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
        self._val: dict[str, list[float]] = defaultdict(list)
        self._answers: dict[str, list[tuple[str, object]]] = defaultdict(list)

    def make_train_collator(self) -> SFTCollator:
        return SFTCollator(self.encoder, self.task_lookup, style=self.style, max_length=self.cfg.data.max_length,
                           reasoning=self.cfg.data.reasoning)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        if not batch.get("num_samples"):
            # Every sample of this micro-batch was too long: a zero loss that still touches the graph keeps
            # DDP ranks in step.
            return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
        loss, n_tokens = sft_loss(self.model, batch)
        self.throughput.add(int(batch["attention_mask"].sum()), batch["num_samples"])
        bs = batch["num_samples"]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/answer_tokens", float(n_tokens), reduce_fx="sum", batch_size=bs)
        if batch.get("skipped_too_long"):
            self.log("train/skipped_too_long", float(batch["skipped_too_long"]), reduce_fx="sum", batch_size=bs)
        return loss

    # ------------------------------------------------------------------ validation
    def validation_step(self, samples: list[Sample], batch_idx: int) -> None:
        collate = SFTCollator(self.encoder, self.task_lookup, style=self.style, max_length=self.cfg.data.max_length,
                              reasoning=self.cfg.data.reasoning)
        batch = self._to_device(collate(samples))
        if batch.get("num_samples"):
            loss, n = sft_loss(self.model, batch)
            self._val["loss_sum"].append(float(loss) * n)
            self._val["loss_tokens"].append(n)
        prompts = self._to_device(PromptCollator(self.encoder, self.task_lookup, style=self.style,
                                                 reasoning=self.cfg.data.reasoning)(samples))
        if not prompts.get("num_samples"):
            return
        out = generate(self.model, self.encoder, prompts, self.val_generation)
        for sample, reasoning, text in zip(prompts["samples"], prompts["reasoning"], out.texts):
            task = self.task_lookup(sample.task)
            self._val[f"correct/{task.family}"].append(float(task.is_correct(text, sample, reasoning=reasoning,
                                                                               style=self.style)))
            group = f"{sample.task}/{sample.meta.get('question_type', '')}"
            self._answers[task.family].append((group, task.parse_answer(task.answer_text(sample))))
            self._val["well_formed"].append(float(task.is_well_formed(text, sample, reasoning=reasoning,
                                                                      style=self.style)))

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def on_validation_epoch_end(self) -> None:
        v, self._val = self._val, defaultdict(list)
        answers, self._answers = self._answers, defaultdict(list)
        results = {f"val/majority_baseline_{family}": majority_baseline(rows) for family, rows in answers.items()}
        if v["loss_tokens"]:
            results["val/loss"] = sum(v["loss_sum"]) / max(1, sum(v["loss_tokens"]))
        for key, values in v.items():
            if key.startswith("correct/") or key == "well_formed":
                name = key.replace("correct/", "accuracy_")
                results[f"val/{name}"] = sum(values) / len(values)
        for key, value in results.items():
            self.log(key, value, sync_dist=True)
        self.last_validation = results




def majority_baseline(rows: list[tuple[str, object]]) -> float:
    """Accuracy of always answering the most frequent answer of each question group (task + question type),
    over the same held-out samples: the bar a model that ignores the image can reach."""
    by_group: dict[str, Counter] = defaultdict(Counter)
    for group, answer in rows:
        by_group[group][answer] += 1
    hits = sum(c.most_common(1)[0][1] for c in by_group.values())
    return hits / max(1, len(rows))
