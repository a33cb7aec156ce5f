"""TRL's side of ``compare``: ``GRPOTrainer`` / ``SFTTrainer`` on the same model directory, prompts and images.

TRL loads the model from the directory itself (``model=<path>`` with ``model_init_kwargs``), as a TRL user does. Its
processor is chexone's image-only Qwen2.5-VL processor plus the one hook the generic ``ProcessorMixin.__call__``
needs to expand image placeholders (the stock ``Qwen2_5_VLProcessor`` also wants a video processor, which needs
torchvision); it yields the same token ids and pixels as chexone's encoder, which the prompt fingerprint checks.
Forced completion lengths: ``generation_kwargs`` adds EOS to ``suppress_tokens`` (with the same vision tokens chexone
suppresses), so ``generate`` never stops early. The phase split is measured by timing TRL's own methods in a
subclass: generation (``_generate``: prompt processing and ``model.generate``), rewards (``_calculate_rewards``),
log-prob passes without gradient, and the policy forward/backward (``training_step`` less the rollout it triggers).
"""

from __future__ import annotations

import importlib.util
import time
from collections import defaultdict
from typing import Any

import torch

from chexone.bench.measure import RunResult, StepClock, mean_split
from chexone.bench.workload import (
    SAMPLING,
    Workload,
    chexone_config,
    conversation,
    grpo_samples,
    prompt_fingerprint,
    sft_samples,
)
from chexone.model.processor import ChexoneVLProcessor, PromptEncoder


class MissingBenchExtraError(ImportError):
    """TRL (or what it needs) is not installed."""


def require_bench_extra() -> None:
    """TRL and ``datasets`` importable, or an error naming the extra that installs them."""
    missing = [name for name in ("trl", "datasets") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingBenchExtraError(f"python -m chexone.bench compare runs TRL, but {', '.join(missing)} is not "
                                     "installed: pip install -c constraints.txt -e '.[bench]'")


class TRLProcessor(ChexoneVLProcessor):
    """chexone's processor with Qwen2.5-VL's placeholder expansion for ``ProcessorMixin.__call__`` (what TRL calls)."""

    return_mm_token_type_ids = True

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        merge = self.image_processor.merge_size**2
        return self.image_token * int(image_inputs["image_grid_thw"][image_idx].prod() // merge)


def _dataset(rows: list[dict[str, Any]]):
    """Rows as the ``datasets.Dataset`` TRL requires (it stores the images as PNG and decodes them on access: a cost
    every TRL user pays, a few milliseconds per image)."""
    from datasets import Dataset

    return Dataset.from_list(rows)


def _format_reward(samples: list[Any]):
    """chexone's built-in ``format`` reward on the completion text: the reward chexone's recipe runs."""
    from chexone.rewards.builtin import format_reward

    def format(prompts, completions, sample_index, **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        texts = [t if isinstance(t, str) else "".join(p.get("text", "") for p in t) for t in texts]
        return format_reward(texts, [samples[i] for i in sample_index])

    return format


def _common_args(w: Workload, output_dir: str) -> dict[str, Any]:
    return dict(
        output_dir=output_dir, max_steps=w.total_steps, learning_rate=w.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        bf16=w.dtype == "bf16", fp16=False, gradient_checkpointing=w.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if w.gradient_checkpointing else None,
        report_to="none", save_strategy="no", logging_steps=w.total_steps + 1, disable_tqdm=True,
        dataloader_num_workers=0, seed=w.seed, use_cpu=w.device != "cuda",
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": w.attn},
    )


def _freeze(model: Any, w: Workload) -> None:
    from chexone.model.loading import apply_freezing

    apply_freezing(model, vision=w.freeze_vision, merger=False, llm=False)


def _clock_callback(clock: StepClock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end()

    return Clock()


def run_grpo(w: Workload, model_dir: str, output_dir: str) -> RunResult:
    require_bench_extra()
    from trl import GRPOConfig, GRPOTrainer

    cfg = chexone_config(w, model_dir, output_dir)
    processor = TRLProcessor.from_pretrained(model_dir, min_pixels=cfg.model.min_pixels,
                                             max_pixels=cfg.model.max_pixels)
    encoder = PromptEncoder(processor)
    samples = grpo_samples(w)
    rows = [{"prompt": conversation(cfg, s, for_generation=True)[0], "images": list(s.images), "sample_index": i}
            for i, s in enumerate(samples)]
    args = GRPOConfig(
        **_common_args(w, output_dir),
        per_device_train_batch_size=w.micro_prompts * w.generations,
        gradient_accumulation_steps=w.prompts // w.micro_prompts,
        num_generations=w.generations, max_completion_length=w.completion_tokens, num_iterations=1, beta=0.0,
        loss_type="dapo", scale_rewards="group", mask_truncated_completions=False, shuffle_dataset=False,
        temperature=SAMPLING["temperature"], top_p=SAMPLING["top_p"], top_k=SAMPLING["top_k"],
        repetition_penalty=SAMPLING["repetition_penalty"], epsilon=0.2, epsilon_high=0.2, log_completions=False,
        generation_kwargs={"suppress_tokens": sorted({*encoder.suppressed_token_ids(), encoder.eos_token_id})},
    )
    phases: list[dict[str, float]] = []
    record: dict[str, Any] = {"prompts": [], "lengths": []}

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with each phase of a step timed (the arithmetic is TRL's own, untouched)."""

        def _timed(self, name: str, fn, *a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                if w.device == "cuda":
                    torch.cuda.synchronize()
                self._phase[name] += time.perf_counter() - t0

        def training_step(self, model, inputs, num_items_in_batch):
            if self._step % self.current_gradient_accumulation_steps == 0:  # first micro-step of an optimizer step
                self._phase = defaultdict(float)
                phases.append(self._phase)
            return self._timed("training_step", super().training_step, model, inputs, num_items_in_batch)

        def _generate_and_score_completions(self, inputs):
            out = self._timed("rollout", super()._generate_and_score_completions, inputs)
            mask = out["prompt_mask"].bool()
            record["prompts"] = [ids[m].tolist() for ids, m in zip(out["prompt_ids"].cpu(), mask.cpu())]
            record["lengths"].append([int(n) for n in out["completion_mask"].sum(dim=1).tolist()])
            return out

        def _generate(self, prompts):
            return self._timed("generation", super()._generate, prompts)

        def _calculate_rewards(self, *a, **kw):
            return self._timed("rewards", super()._calculate_rewards, *a, **kw)

        def _get_per_token_logps_and_entropies(self, *a, **kw):
            if torch.is_grad_enabled():  # the policy pass: inside training_step's own time
                return super()._get_per_token_logps_and_entropies(*a, **kw)
            return self._timed("logps", super()._get_per_token_logps_and_entropies, *a, **kw)

    clock = StepClock(w.device)
    trainer = TimedGRPOTrainer(model=model_dir, reward_funcs=_format_reward(samples), args=args,
                               train_dataset=_dataset(rows), processing_class=processor,
                               callbacks=[_clock_callback(clock)])
    _freeze(trainer.model, w)
    trainer.train()
    per_step = []
    for p in phases:
        rollout = p.get("rollout", 0.0)
        per_step.append({"generation": p.get("generation", 0.0), "rewards": p.get("rewards", 0.0),
                         "logps": p.get("logps", 0.0), "policy": p.get("training_step", 0.0) - rollout})
    steps = record["lengths"]
    image_id = processor.image_token_id
    return RunResult(
        framework="trl",
        step_seconds=clock.step_seconds(w.warmup),
        tokens_per_step=[sum(lengths) for lengths in steps[w.warmup:]],
        completion_lengths=[n for lengths in steps[w.warmup:] for n in lengths],
        prompt_fingerprint=prompt_fingerprint(_distinct(record["prompts"])),
        prompt_lengths=[len(p) for p in _distinct(record["prompts"])],
        image_tokens=[sum(1 for t in p if t == image_id) for p in _distinct(record["prompts"])],
        split=mean_split(per_step, w.warmup),
    )


def _distinct(prompts: list[list[int]]) -> list[list[int]]:
    """TRL repeats each prompt G times; one copy of each (in first-seen order)."""
    seen, out = set(), []
    for p in prompts:
        if tuple(p) not in seen:
            seen.add(tuple(p))
            out.append(p)
    return out


def run_sft(w: Workload, model_dir: str, output_dir: str) -> RunResult:
    require_bench_extra()
    from trl import SFTConfig, SFTTrainer

    cfg = chexone_config(w, model_dir, output_dir)
    processor = TRLProcessor.from_pretrained(model_dir, min_pixels=cfg.model.min_pixels,
                                             max_pixels=cfg.model.max_pixels)
    rows = []
    for s in sft_samples(w):
        messages, target = conversation(cfg, s, for_generation=False)
        rows.append({"prompt": messages, "completion": [{"role": "assistant", "content": target}],
                     "images": list(s.images)})
    args = SFTConfig(**_common_args(w, output_dir), per_device_train_batch_size=w.sft_batch, max_length=None,
                     packing=False, padding_free=False, shuffle_dataset=False, completion_only_loss=True)
    batches: list[dict[str, Any]] = []

    class CountingSFTTrainer(SFTTrainer):
        """SFTTrainer recording each batch's token counts (the loss is TRL's own, untouched)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            batches.append({k: inputs[k].detach().cpu() for k in ("input_ids", "attention_mask", "labels")})
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    clock = StepClock(w.device)
    trainer = CountingSFTTrainer(model=model_dir, args=args, train_dataset=_dataset(rows), processing_class=processor,
                                 callbacks=[_clock_callback(clock)])
    _freeze(trainer.model, w)
    trainer.train()
    first = batches[0]
    mask = first["attention_mask"].bool()
    prompts = [ids[m & (labels == -100)].tolist() for ids, m, labels in zip(first["input_ids"], mask, first["labels"])]
    return RunResult(
        framework="trl",
        step_seconds=clock.step_seconds(w.warmup),
        tokens_per_step=[int(b["attention_mask"].sum()) for b in batches[w.warmup:]],
        prompt_fingerprint=prompt_fingerprint(prompts),
        prompt_lengths=[int(n) for n in mask.sum(dim=1).tolist()],
        image_tokens=[sum(1 for t in p if t == processor.image_token_id) for p in prompts],
    )
