"""The training core shared by SFT and GRPO: model inputs, logits at selected positions, the optimizer and schedule,
throughput accounting, Hugging Face export, and the LightningModule base class."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from chexone.model import transformers_compat as compat
from chexone.training.guards import StepGuard, ensure_finite_weights, gradient_norm

log = logging.getLogger(__name__)

#: Batch keys the model's own ``forward``/``generate`` take (the public multimodal inputs).
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The subset of a batch that ``model.generate`` takes."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch and batch[k] is not None}


def batch_positions(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """RoPE positions of a batch (multimodal where it has images), always computed here and passed explicitly."""
    positions, _ = compat.rope_positions(model, batch["input_ids"], batch["attention_mask"],
                                         batch.get("image_grid_thw"), batch.get("mm_token_type_ids"))
    return positions


def hidden_states(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Last hidden states [B, T, H] of the decoder, image features merged in.

    A batch may carry ``image_features`` (one tensor per image, e.g. computed once per GRPO prompt and shared by its
    G completions) instead of ``pixel_values``.
    """
    features = batch.get("image_features")
    if features is None and batch.get("pixel_values") is not None:
        features = compat.image_features(model, batch["pixel_values"], batch["image_grid_thw"])
    embeds = compat.embed_inputs(model, batch["input_ids"], features)
    return compat.decoder_hidden_states(model, embeds, batch["attention_mask"], batch_positions(model, batch))


def next_token_logits(model: nn.Module, batch: dict[str, Any], predict_mask: torch.Tensor) -> torch.Tensor:
    """Float32 logits predicting token t+1 from position t, only where ``predict_mask[:, t+1]`` is set.

    Applying the LM head to the answer positions only avoids a [B, T, vocab] tensor over prompt and image tokens,
    which dominates memory with the real 151k vocabulary. Returns [N, vocab] in row-major order of the mask.
    """
    if is_fsdp2(model):
        # FSDP2 gathers parameters in the root module's forward, so go through it (pixels, full logits, then select).
        if batch.get("image_features") is not None:
            raise ValueError("precomputed image_features cannot be used with FSDP2 sharding; pass pixel_values")
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
                  if batch.get(k) is not None}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(compat.vision_dtype(model))
        logits = model(**inputs, position_ids=batch_positions(model, batch), use_cache=False, return_dict=True).logits
        return logits[:, :-1][predict_mask[:, 1:]].float()
    h = hidden_states(model, batch)
    sel = h[:, :-1][predict_mask[:, 1:]]
    return model.lm_head(sel).float()


def is_fsdp2(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - very old torch
        return False
    return isinstance(model, FSDPModule)


def sft_loss(model: nn.Module, batch: dict[str, Any], ignore_index: int = -100) -> tuple[torch.Tensor, int]:
    """Mean token cross-entropy over the answer tokens (labels != ignore_index); returns (loss, token count)."""
    labels = batch["labels"]
    mask = labels != ignore_index
    logits = next_token_logits(model, batch, mask)
    targets = labels[:, 1:][mask[:, 1:]]
    n = int(targets.numel())
    if n == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits, targets), n


def token_logps(model: nn.Module, batch: dict[str, Any], predict_mask: torch.Tensor, temperature: float = 1.0,
                with_entropy: bool = False):
    """Log-probs [B, T] of each token where ``predict_mask`` is set (0 elsewhere), from logits / ``temperature``;
    with ``with_entropy`` also the predictive entropy [B, T] at those tokens (no gradient).

    The same computation as the SFT loss's logits, so SFT and GRPO score tokens identically.
    """
    logits = next_token_logits(model, batch, predict_mask)
    if temperature != 1.0:
        logits = logits / temperature
    targets = batch["input_ids"][:, 1:][predict_mask[:, 1:]]
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = log_probs.gather(1, targets[:, None]).squeeze(1)
    shifted = torch.zeros_like(predict_mask, dtype=torch.bool)
    shifted[:, 1:] = predict_mask[:, 1:]
    out = torch.zeros(predict_mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(shifted, picked)
    if not with_entropy:
        return out
    with torch.no_grad():
        ent = -(log_probs.exp() * log_probs).sum(-1)
        entropy = torch.zeros(predict_mask.shape, dtype=ent.dtype, device=ent.device).masked_scatter(shifted, ent)
    return out, entropy


# ------------------------------------------------------------------------------------------------ schedule


def lr_multiplier(step: int, *, max_steps: int, warmup_ratio: float, scheduler: str, min_lr_ratio: float = 0.0) -> float:
    """LR factor at optimizer step ``step`` (0-based): linear warmup to 1, then cosine/linear decay or constant.

    Warmup runs ``ceil(warmup_ratio * max_steps)`` steps and starts at 1/(warmup+1), never at 0, so no step is wasted.
    """
    warmup = math.ceil(warmup_ratio * max_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if scheduler == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if scheduler == "linear":
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress)
    raise ValueError(f"optim.scheduler={scheduler!r}; choose cosine | linear | constant")


def build_optimizer(model: nn.Module, optim: Any, max_steps: int):
    """AdamW over trainable parameters (no weight decay on biases and norms; per-part learning-rate multipliers
    ``optim.lr_scale``) + a per-step LambdaLR."""
    from chexone.model.loading import model_parts

    part_of = {id(p): part for part, modules in model_parts(model).items() for m in modules for p in m.parameters()}
    scale = getattr(optim, "lr_scale", None)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "norm" in name.lower()
        buckets.setdefault((part_of.get(id(p), "llm"), no_decay), []).append(p)
    groups = [
        {"params": params, "weight_decay": 0.0 if no_decay else optim.weight_decay,
         "lr": optim.lr * (float(getattr(scale, part)) if scale is not None else 1.0), "part": part}
        for (part, no_decay), params in sorted(buckets.items())
    ]
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: lr_multiplier(s, max_steps=max_steps, warmup_ratio=optim.warmup_ratio, scheduler=optim.scheduler,
                                min_lr_ratio=optim.min_lr_ratio),
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


# ------------------------------------------------------------------------------------------------ module base


class Throughput:
    """Tokens and samples per second between optimizer steps (wall clock on this rank)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, tokens: int, samples: int) -> None:
        self.tokens += tokens
        self.samples += samples

    def rates(self) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        out = {"tokens_per_s": self.tokens / dt, "samples_per_s": self.samples / dt}
        self.tokens = self.samples = 0
        self.t0 = time.perf_counter()
        return out


class ChexoneModule(L.LightningModule):
    """Base LightningModule: owns the HF model + processor, the optimizer/schedule, throughput logging and export.

    ``cfg`` is the resolved recipe as a plain dict-like (OmegaConf) object; it is stored in checkpoints as a plain
    dict so checkpoints load with ``weights_only=True``.
    """

    def __init__(self, cfg: Any, loaded: Any):
        super().__init__()
        self.cfg = cfg
        self.model = loaded.model.train()  # from_pretrained returns eval mode
        self.processor = loaded.processor
        self.loaded_info = loaded.summary()
        self.throughput = Throughput()
        self.step_guard = StepGuard(cfg.trainer.max_consecutive_skipped_steps, self.any_rank)
        self._window_loss: torch.Tensor | None = None  # summed loss of the micro-batches of this optimizer step

    def any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank (one scalar all-reduce; just ``flag`` in a single process)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(trainer.strategy.reduce(t, reduce_op="sum") > 0)

    def add_to_step_loss(self, loss: torch.Tensor) -> None:
        """Remember a micro-batch loss for the non-finite check of the coming optimizer step (no device sync)."""
        loss = loss.detach().float()
        self._window_loss = loss if self._window_loss is None else self._window_loss + loss

    def guard_step(self, optimizer) -> bool:
        """Whether this optimizer step may update the weights: False (gradients cleared, step counted and logged)
        when the loss of its micro-batches or the gradient norm is NaN/inf. Call with the gradients in place, before
        clipping."""
        loss = float(self._window_loss) if self._window_loss is not None else 0.0
        self._window_loss = None
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self._trainer is not None and str(self.trainer.precision) == "16-mixed":
            # fp16 loss scaling overflows on purpose while it finds its scale; its GradScaler skips those steps itself
            self.log("train/grad_norm", gradient_norm(params), rank_zero_only=True)
            return True
        ok, norm = self.step_guard.check(params, loss=loss, step=self.global_step)
        self.log("train/grad_norm", norm, rank_zero_only=True)
        self.log("train/skipped_steps", float(self.step_guard.skipped), rank_zero_only=True)
        return ok

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ensure_finite_weights(self.model, f"a checkpoint at step {self.global_step}", self.any_rank)
        checkpoint["chexone_step_guard"] = self.step_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.step_guard.load_state_dict(checkpoint.get("chexone_step_guard", {}))

    def configure_model(self) -> None:
        """With ``trainer.strategy=fsdp2``: shard every decoder layer and vision block, then the root (FSDP2)."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if not isinstance(self.trainer.strategy, ModelParallelStrategy) or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        inner = self.model.model
        for block in list(inner.visual.blocks) + list(inner.language_model.layers):
            fully_shard(block, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        self._sharded = True

    # --- optimisation
    def configure_optimizers(self):
        return build_optimizer(self.model, self.cfg.optim, self.cfg.trainer.max_steps)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.automatic_optimization:  # manual optimisation (GRPO) calls guard_step itself, before clipping
            self.guard_step(optimizer)
        if self.global_step % max(1, self.cfg.trainer.log_every_n_steps) == 0:
            rates = self.throughput.rates()
            self.log("train/tokens_per_s", rates["tokens_per_s"], prog_bar=True, rank_zero_only=True)
            self.log("train/samples_per_s", rates["samples_per_s"], rank_zero_only=True)
            self.log("train/lr", optimizer.param_groups[0]["lr"], rank_zero_only=True)
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is not None and hasattr(datamodule, "skip_stats"):
                for key, value in datamodule.skip_stats().items():
                    self.log(key, float(value), rank_zero_only=True)

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)  # a fresh, reproducible shard order per epoch

    # --- export
    def export_hf(self, directory: str | Path) -> Path:
        """``save_pretrained`` of model (safetensors) + processor: reloadable with ``from_pretrained``.

        Call it on every rank: with sharded (FSDP2) weights the full state dict is gathered collectively; only global
        rank 0 writes.
        """
        directory = Path(directory)
        state_dict = None
        if getattr(self, "_sharded", False):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state_dict = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
        ensure_finite_weights(self.model, f"the Hugging Face export {directory}", self.any_rank)
        trainer = self._trainer
        if trainer is not None and not trainer.is_global_zero:
            return directory
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
        self.processor.save_pretrained(directory)
        self.processor.tokenizer.save_pretrained(directory)
        return directory
