"""Rollout engines for GRPO: G completions per prompt, with the sampling log-probs the loss needs.

``shared_prefill`` (default) encodes each prompt's images and prefills its prompt ONCE, then forks the KV cache G
ways and samples the G completions together; ``hf_generate`` is the plain ``model.generate(num_return_sequences=G)``
path that re-encodes the image and re-prefills the prompt G times (kept as the reference and for comparison). Both
suppress the vision special tokens, left-pad prompts and stop on ``<|im_end|>``. A vLLM engine can implement the same
``generate`` signature without touching the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from chexone.model import transformers_compat as compat
from chexone.model.processor import PromptEncoder
from chexone.training.core import model_inputs

ENGINES = ("shared_prefill", "hf_generate")


@dataclass
class SamplingSettings:
    num_generations: int = 8
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    do_sample: bool = True
    #: Keep the sampled tokens' log-probs (GRPO needs them; plain evaluation does not: HF ``generate`` would hold
    #: every step's full-vocabulary logits to provide them).
    return_logps: bool = True


@dataclass
class Rollouts:
    """G completions for each of P prompts, rows ordered prompt-major (row = p * G + g)."""

    completion_ids: torch.Tensor  # [P*G, Lc], pad after the stop token
    completion_mask: torch.Tensor  # [P*G, Lc], 1 up to and including the stop token
    sampling_logps: torch.Tensor  # [P*G, Lc], log softmax(logits / T) of the sampled tokens (0 where masked)
    texts: list[str]
    truncated: torch.Tensor  # [P*G] no stop token within max_new_tokens


class RolloutEngine(Protocol):
    def generate(self, model: nn.Module, encoder: PromptEncoder, batch: dict[str, Any],
                 settings: SamplingSettings) -> Rollouts: ...


def shared_image_features(model: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor] | None:
    """The merged vision features of each image in the batch, computed once (gradients flow into the merger)."""
    if batch.get("pixel_values") is None:
        return None
    return compat.image_features(model, batch["pixel_values"], batch["image_grid_thw"])


def expand_for_groups(batch: dict[str, Any], features: list[torch.Tensor] | None, group: int) -> dict[str, Any]:
    """Repeat each prompt's tensors G times (prompt-major) and reuse its image features instead of pixels."""
    out = {k: batch[k].repeat_interleave(group, dim=0) for k in ("input_ids", "attention_mask", "mm_token_type_ids")
           if batch.get(k) is not None}
    if features is not None:
        counts = batch["num_images"]
        grids = batch["image_grid_thw"]
        feats, grid_rows, start = [], [], 0
        for n in counts:
            for _ in range(group):
                feats.extend(features[start : start + n])
                grid_rows.append(grids[start : start + n])
            start += n
        out["image_features"] = feats
        out["image_grid_thw"] = torch.cat(grid_rows, dim=0)
    return out


def _finish(encoder: PromptEncoder, tokens: torch.Tensor, logps: torch.Tensor) -> Rollouts:
    is_eos = tokens == encoder.eos_token_id
    after_stop = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    mask = (~after_stop).long()
    tokens = tokens.masked_fill(after_stop, encoder.pad_token_id)
    logps = logps.masked_fill(after_stop, 0.0)
    texts = encoder.tokenizer.batch_decode(
        [t[m.bool() & (t != encoder.eos_token_id)] for t, m in zip(tokens, mask)], skip_special_tokens=False
    )
    return Rollouts(tokens, mask, logps, texts, ~is_eos.any(dim=1))


def _processors(settings: SamplingSettings) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if settings.repetition_penalty and settings.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.do_sample:
        if settings.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            procs.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            procs.append(TopPLogitsWarper(settings.top_p))
    return procs


class SharedPrefillEngine:
    """Prefill each prompt once (image encoded once), fork the KV cache G ways, sample with HF logits processors.

    ``on_tokens`` (optional) is called after every decoding step with the tokens just chosen ([rows], pad for rows
    already finished) and may return True to stop early: the streaming server uses it to send text as it is made.
    """

    def __init__(self, generator: torch.Generator | None = None,
                 on_tokens: Callable[[torch.Tensor], bool | None] | None = None):
        self.generator = generator
        self.on_tokens = on_tokens

    @torch.no_grad()
    def generate(self, model: nn.Module, encoder: PromptEncoder, batch: dict[str, Any],
                 settings: SamplingSettings) -> Rollouts:
        was_training = model.training
        model.eval()
        try:
            return self._generate(model, encoder, batch, settings)
        finally:
            model.train(was_training)

    def _generate(self, model, encoder, batch, settings) -> Rollouts:
        G = settings.num_generations
        ids, attn = batch["input_ids"], batch["attention_mask"]
        features = shared_image_features(model, batch)
        positions, deltas = compat.rope_positions(model, ids, attn, batch.get("image_grid_thw"),
                                                  batch.get("mm_token_type_ids"))
        logits, cache = compat.forward_with_cache(model, inputs_embeds=compat.embed_inputs(model, ids, features),
                                                  attention_mask=attn, position_ids=positions)
        compat.repeat_cache(cache, G)
        logits = logits[:, -1].float().repeat_interleave(G, dim=0)
        attn = attn.repeat_interleave(G, dim=0)
        deltas = deltas.repeat_interleave(G, dim=0)
        seq = ids.repeat_interleave(G, dim=0)
        procs = _processors(settings)
        suppress = torch.tensor(encoder.suppressed_token_ids(), dtype=torch.long, device=ids.device)
        done = torch.zeros(seq.shape[0], dtype=torch.bool, device=ids.device)
        tokens, logps = [], []
        for _ in range(settings.max_new_tokens):
            raw = logits / settings.temperature if settings.do_sample else logits
            scores = logits.clone()
            if suppress.numel():
                scores[:, suppress] = float("-inf")
            scores = procs(seq, scores)
            if settings.do_sample:
                nxt = torch.multinomial(F.softmax(scores, dim=-1), 1, generator=self.generator).squeeze(1)
            else:
                nxt = scores.argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, encoder.pad_token_id), nxt)
            logps.append(torch.log_softmax(raw, dim=-1).gather(1, nxt[:, None]).squeeze(1))
            tokens.append(nxt)
            done = done | (nxt == encoder.eos_token_id)
            if self.on_tokens is not None and self.on_tokens(nxt):
                break
            if bool(done.all()):
                break
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = (attn.sum(-1, keepdim=True) - 1 + deltas)[None].expand(3, -1, -1)
            logits, cache = compat.forward_with_cache(model, input_ids=nxt[:, None], attention_mask=attn,
                                                      position_ids=pos, cache=cache)
            logits = logits[:, -1].float()
        return _finish(encoder, torch.stack(tokens, dim=1), torch.stack(logps, dim=1))


class HFGenerateEngine:
    """``model.generate(num_return_sequences=G)``: re-encodes each image and re-prefills each prompt G times."""

    @torch.no_grad()
    def generate(self, model: nn.Module, encoder: PromptEncoder, batch: dict[str, Any],
                 settings: SamplingSettings) -> Rollouts:
        inputs = model_inputs(batch)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(compat.vision_dtype(model))
        kwargs: dict[str, Any] = dict(
            max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
            num_return_sequences=settings.num_generations, eos_token_id=encoder.eos_token_id,
            pad_token_id=encoder.pad_token_id, suppress_tokens=encoder.suppressed_token_ids(),
            repetition_penalty=settings.repetition_penalty, output_logits=settings.return_logps,
            return_dict_in_generate=True,
        )
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        was_training = model.training
        model.eval()
        try:
            out = model.generate(**inputs, **kwargs)
        finally:
            model.train(was_training)
        tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
        if settings.return_logps:
            temperature = settings.temperature if settings.do_sample else 1.0
            raw = torch.stack(out.logits, dim=1).float() / temperature
            logps = torch.log_softmax(raw, dim=-1).gather(2, tokens[..., None]).squeeze(2)
        else:
            logps = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        return _finish(encoder, tokens, logps)


def make_engine(name: str, generator: torch.Generator | None = None) -> RolloutEngine:
    if name == "shared_prefill":
        return SharedPrefillEngine(generator)
    if name == "hf_generate":
        return HFGenerateEngine()
    raise ValueError(f"grpo.engine={name!r}; choose one of {ENGINES}")


def build_policy_batch(prompts: dict[str, Any], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                       group: int, features: list[torch.Tensor] | None) -> tuple[dict[str, Any], torch.Tensor]:
    """Prompt (left-padded, repeated G times) + completion (right-padded) as one teacher-forcing batch.

    Returns (batch, predict_mask) where predict_mask marks the completion tokens. Image features are the shared
    per-prompt ones (``shared_image_features``), so each image is encoded once however large G is.
    """
    base = expand_for_groups(prompts, features, group)
    if features is None and prompts.get("pixel_values") is not None:  # no sharing: let the model encode pixels
        base["pixel_values"] = torch.cat(
            [chunk for chunk, n in zip(_pixel_chunks(prompts), prompts["num_images"]) for _ in range(group)], dim=0)
        base["image_grid_thw"] = torch.cat(
            [g for g, n in zip(_grid_chunks(prompts), prompts["num_images"]) for _ in range(group)], dim=0)
    input_ids = torch.cat([base["input_ids"], completion_ids], dim=1)
    attention_mask = torch.cat([base["attention_mask"], completion_mask], dim=1)
    predict = torch.cat([torch.zeros_like(base["attention_mask"]), completion_mask], dim=1).bool()
    batch = {**base, "input_ids": input_ids, "attention_mask": attention_mask}
    if base.get("mm_token_type_ids") is not None:
        batch["mm_token_type_ids"] = torch.cat([base["mm_token_type_ids"], torch.zeros_like(completion_mask)], dim=1)
    return batch, predict


def _grid_chunks(prompts: dict[str, Any]) -> list[torch.Tensor]:
    grids, out, start = prompts["image_grid_thw"], [], 0
    for n in prompts["num_images"]:
        out.append(grids[start : start + n])
        start += n
    return out


def _pixel_chunks(prompts: dict[str, Any]) -> list[torch.Tensor]:
    """Split the concatenated pixel patches back into per-prompt chunks."""
    sizes = [int(g.prod(-1).sum()) for g in _grid_chunks(prompts)]
    return list(torch.split(prompts["pixel_values"], sizes, dim=0))
