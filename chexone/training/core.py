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
from torch import nn

from chexone.model import transformers_compat as compat
from chexone.training.guards import StepGuard, ensure_finite_weights, gradient_norm
from chexone.training.lightning_compat import logs_this_step

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


def answer_states(model: nn.Module, batch: dict[str, Any],
                  predict_mask: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
    """(states [N, ...], head) such that ``head(states)`` are the logits predicting token t+1 from position t where
    ``predict_mask[:, t+1]`` is set, in row-major order of the mask.

    Normally the states are the decoder's last hidden states at those positions and the head is ``model.lm_head``:
    the LM head runs on the answer positions only, never on a [B, T, vocab] tensor over prompt and image tokens. With
    FSDP2 the parameters are gathered in the root module's forward, so that forward runs (pixels in, full logits out),
    the states are its logits at those positions and the head is the identity.
    """
    if is_fsdp2(model):
        if batch.get("image_features") is not None:
            raise ValueError("precomputed image_features cannot be used with FSDP2 sharding; pass pixel_values")
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
                  if batch.get(k) is not None}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(compat.vision_dtype(model))
        logits = model(**inputs, position_ids=batch_positions(model, batch), use_cache=False, return_dict=True).logits
        return logits[:, :-1][predict_mask[:, 1:]], nn.Identity()
    h = hidden_states(model, batch)
    return h[:, :-1][predict_mask[:, 1:]], model.lm_head


def next_token_logits(model: nn.Module, batch: dict[str, Any], predict_mask: torch.Tensor) -> torch.Tensor:
    """Float32 logits [N, vocab] predicting token t+1 from position t, only where ``predict_mask[:, t+1]`` is set.

    For callers that need the logits themselves; the losses score tokens with ``selected_token_logps``, which never
    holds float32 logits for more than a chunk of tokens.
    """
    states, head = answer_states(model, batch, predict_mask)
    return head(states).float()


def is_fsdp2(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - very old torch
        return False
    return isinstance(model, FSDPModule)


def _chunk_logps(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                 with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(lm_head(hidden) / T) at ``targets``, entropy or an empty tensor) for one chunk of tokens."""
    logits = lm_head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    normaliser = logits.logsumexp(dim=-1)
    picked = logits.gather(1, targets[:, None]).squeeze(1) - normaliser
    if not with_entropy:
        return picked, picked.new_empty(0)
    with torch.no_grad():  # H = logsumexp(z) - sum softmax(z) z
        entropy = normaliser - (logits.softmax(dim=-1) * logits).sum(-1)
    return picked, entropy


def selected_token_logps(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                         with_entropy: bool = False,
                         chunk_tokens: int = 1024) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float32 ``log softmax(lm_head(hidden) / temperature)`` at ``targets`` ([N]) for hidden states [N, H], and with
    ``with_entropy`` the predictive entropy of each token ([N], no gradient; else None).

    Full-vocabulary float32 logits exist for at most ``chunk_tokens`` tokens at a time, in the forward pass and in the
    backward pass: with gradients each chunk runs under activation checkpointing, so only its hidden states are kept
    and its logits are recomputed when its gradient is needed (one extra LM-head matmul per chunk). At Qwen's 151,936
    tokens a float32 logit row is 0.6 MB, so 1024 tokens take 0.6 GB instead of N x 0.6 MB per copy.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be at least 1")
    from torch.utils.checkpoint import checkpoint

    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or
                                              any(p.requires_grad for p in lm_head.parameters()))
    picked, entropy = [], []
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if needs_grad:
            lp, ent = checkpoint(_chunk_logps, lm_head, h, t, temperature, with_entropy, use_reentrant=False,
                                 preserve_rng_state=False)
        else:
            lp, ent = _chunk_logps(lm_head, h, t, temperature, with_entropy)
        picked.append(lp)
        entropy.append(ent)
    if not picked:  # no tokens: keep the graph connected to the head (as a loss of 0 should be)
        empty = lm_head(hidden).float().sum(-1) * 0.0
        return empty, (empty.detach() if with_entropy else None)
    return torch.cat(picked), (torch.cat(entropy).detach() if with_entropy else None)


def sft_loss(model: nn.Module, batch: dict[str, Any], ignore_index: int = -100) -> tuple[torch.Tensor, int]:
    """Mean token cross-entropy over the answer tokens (labels != ignore_index); returns (loss, token count).

    Scored by ``selected_token_logps`` like GRPO's tokens: the cross-entropy is minus the mean log-prob."""
    labels = batch["labels"]
    mask = labels != ignore_index
    states, head = answer_states(model, batch, mask)
    targets = labels[:, 1:][mask[:, 1:]]
    n = int(targets.numel())
    if n == 0:
        return head(states).sum() * 0.0, 0
    logps, _ = selected_token_logps(head, states, targets)
    return -logps.mean(), n


def token_logps(model: nn.Module, batch: dict[str, Any], predict_mask: torch.Tensor, temperature: float = 1.0,
                with_entropy: bool = False):
    """Log-probs [B, T] of each token where ``predict_mask`` is set (0 elsewhere), from logits / ``temperature``;
    with ``with_entropy`` also the predictive entropy [B, T] at those tokens (no gradient).

    The same computation as the SFT loss (``selected_token_logps``), so SFT and GRPO score tokens identically.
    """
    states, head = answer_states(model, batch, predict_mask)
    targets = batch["input_ids"][:, 1:][predict_mask[:, 1:]]
    picked, ent = selected_token_logps(head, states, targets, temperature, with_entropy=with_entropy)
    shifted = torch.zeros_like(predict_mask, dtype=torch.bool)
    shifted[:, 1:] = predict_mask[:, 1:]
    out = torch.zeros(predict_mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(shifted, picked)
    if not with_entropy:
        return out
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


def adamw(groups: list[dict[str, Any]], fused: bool = True, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where it supports every parameter (device and dtype; CUDA and CPU among
    them), else the multi-tensor ``foreach`` one: the same update as the per-parameter loop torch otherwise runs,
    with a few kernels instead of several per parameter. torch itself refuses ``fused=True`` for parameters it cannot
    serve, which is the test used.

    ``fused=False`` for fp16 loss scaling: a fused optimizer unscales gradients inside its step, and Lightning then
    refuses gradient clipping."""
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except RuntimeError as err:
            log.info("fused AdamW is not available for these parameters (%s); using foreach", err)
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def build_optimizer(model: nn.Module, optim: Any, max_steps: int, fused: bool = True):
    """AdamW (fused where torch supports it: ``adamw``) over trainable parameters (no weight decay on biases and norms;
    per-part learning-rate multipliers ``optim.lr_scale``) + a per-step LambdaLR."""
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
    opt = adamw(groups, fused=fused, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
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
        self._log_now = True  # set per step from trainer.log_every_n_steps (see log_now)

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
            if self.log_now:
                self.log("train/grad_norm", gradient_norm(params), rank_zero_only=True)
            return True
        ok, norm = self.step_guard.check(params, loss=loss, step=self.global_step)
        if self.log_now or not ok:
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
        loss_scaling = str(getattr(self._trainer, "precision", "")) == "16-mixed"
        return build_optimizer(self.model, self.cfg.optim, self.cfg.trainer.max_steps, fused=not loss_scaling)

    def clip_gradient_norm(self, optimizer, max_norm: float) -> None:
        """Clip the global gradient norm to ``max_norm``. With fp16 loss scaling Lightning's own path runs (it
        unscales first; the optimizer is not fused then). Otherwise torch's ``clip_grad_norm_`` directly: Lightning's
        mixed-precision plugin refuses to clip for a fused optimizer even under bf16, which has no scaler to undo."""
        if self._trainer is not None and str(self.trainer.precision) == "16-mixed":
            self.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val:
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"gradient clipping by {gradient_clip_algorithm!r}: only 'norm' is supported")
            self.clip_gradient_norm(optimizer, float(gradient_clip_val))

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.automatic_optimization:  # manual optimisation (GRPO) calls guard_step itself, before clipping
            self.guard_step(optimizer)
        if self.log_now:
            rates = self.throughput.rates()
            self.log("train/tokens_per_s", rates["tokens_per_s"], prog_bar=True, rank_zero_only=True)
            self.log("train/samples_per_s", rates["samples_per_s"], rank_zero_only=True)
            self.log("train/lr", optimizer.param_groups[0]["lr"], rank_zero_only=True)
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is not None and hasattr(datamodule, "skip_stats"):
                for key, value in datamodule.skip_stats().items():
                    self.log(key, float(value), rank_zero_only=True)

    @property
    def log_now(self) -> bool:
        """Whether this optimizer step's metrics reach the loggers (``trainer.log_every_n_steps``): metrics that only
        feed the loggers are logged on those steps alone, since every ``self.log`` call costs Lightning bookkeeping."""
        return self._log_now

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._log_now = logs_this_step(self.trainer)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "note_trained"):
            datamodule.note_trained(batch)  # its stream position goes into the next checkpoint (exact resume)

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
