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
from torch import nn

from chexone.model import transformers_compat as compat
from chexone.model.processor import PromptEncoder
from chexone.model.static_decode import StaticDecoder, static_decoder_problem
from chexone.training.core import is_fsdp2, model_inputs, token_logps
from chexone.training.sampling import exponential_race, filter_scores, greedy

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
    #: Compute the sampled tokens' log-probs (``Rollouts.sampling_logps``). GRPO does not read them (its loss scores
    #: the completions by teacher forcing) and turns this off; each engine then skips that work entirely.
    return_logps: bool = True


@dataclass
class Rollouts:
    """G completions for each of P prompts, rows ordered prompt-major (row = p * G + g)."""

    completion_ids: torch.Tensor  # [P*G, Lc], pad after the stop token
    completion_mask: torch.Tensor  # [P*G, Lc], 1 up to and including the stop token
    sampling_logps: torch.Tensor  # [P*G, Lc], log softmax(logits / T) of the sampled tokens (0 where masked; all 0
    #                               without ``return_logps``)
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


class SharedPrefillEngine:
    """Prefill each prompt once (image encoded once), fork the KV cache G ways, then decode all rows together.

    Per step, the work besides the model forward is one pass of ``chexone.training.sampling`` over the [rows, vocab]
    scores (no full-vocabulary sort; no log-softmax unless ``settings.return_logps``) and no host sync: whether rows
    have finished is read every ``check_every`` steps (default: every step on CPU, where reading costs nothing; every
    8th on accelerators, where it would stall the queue of launched kernels). Finished rows are then dropped from the
    batch and the KV cache, so they stop costing compute. For a given generator the tokens are those of HF's logits
    processors followed by ``torch.multinomial`` on every row: noise is drawn for every row at every step, as
    multinomial does, so a row's tokens never depend on when other rows finish, and the draws of steps run after the
    last row stopped (between two checks) are rewound out of the generator.

    Decoding steps run through ``chexone.model.static_decode`` (a KV cache preallocated for the whole completion, the
    decoder's arithmetic without the generic forward: the same logits, about half the time per step on the tiny model)
    wherever the model allows it (``static_cache=True``, not FSDP2-sharded, plain projections); otherwise through the
    model's forward with its growing cache.

    ``on_tokens`` (optional) is called after every decoding step with the tokens just chosen ([rows], pad for rows
    already finished) and may return True to stop early: the streaming server uses it to send text as it is made.
    """

    def __init__(self, generator: torch.Generator | None = None,
                 on_tokens: Callable[[torch.Tensor], bool | None] | None = None, check_every: int | None = None,
                 static_cache: bool = True):
        self.generator = generator
        self.on_tokens = on_tokens
        self.check_every = check_every
        self.static_cache = static_cache  # decode through chexone.model.static_decode where the model allows it

    @torch.no_grad()
    def generate(self, model: nn.Module, encoder: PromptEncoder, batch: dict[str, Any],
                 settings: SamplingSettings) -> Rollouts:
        was_training = model.training
        model.eval()
        try:
            return self._generate(model, encoder, batch, settings)
        finally:
            model.train(was_training)

    def _sampling_generator(self, device: torch.device) -> torch.Generator | None:
        """The generator the noise comes from (the default one of ``device`` when none was given), or None where the
        default generator is not reachable (then every step is checked, so nothing needs rewinding)."""
        if self.generator is not None:
            return self.generator
        if device.type == "cpu":
            return torch.default_generator
        if device.type == "cuda":
            return torch.cuda.default_generators[device.index if device.index is not None else
                                                 torch.cuda.current_device()]
        return None

    def _check_interval(self, device: torch.device, generator: torch.Generator | None, sampling: bool) -> int:
        if self.on_tokens is not None or (sampling and generator is None):
            return 1
        if self.check_every is not None:
            return max(1, int(self.check_every))
        return 1 if device.type == "cpu" else 8

    def _generate(self, model, encoder, batch, settings) -> Rollouts:
        G = settings.num_generations
        ids, attn = batch["input_ids"], batch["attention_mask"]
        device, pad, eos = ids.device, encoder.pad_token_id, encoder.eos_token_id
        features = shared_image_features(model, batch)
        positions, deltas = compat.rope_positions(model, ids, attn, batch.get("image_grid_thw"),
                                                  batch.get("mm_token_type_ids"))
        logits, cache = compat.forward_with_cache(model, inputs_embeds=compat.embed_inputs(model, ids, features),
                                                  attention_mask=attn, position_ids=positions)
        rows, prompt_len, max_new = ids.shape[0] * G, ids.shape[1], settings.max_new_tokens
        first_position = attn.sum(-1, keepdim=True) + deltas  # RoPE position of each prompt's first new token
        static = self.static_cache and not is_fsdp2(model) and static_decoder_problem(model) is None
        decoder = (StaticDecoder if static else GrowingCacheDecoder)(model, cache, attn, first_position, G, max_new)
        del cache  # the decoder holds what it needs of the prefill's cache
        logits = logits[:, -1].float().repeat_interleave(G, dim=0)
        # Per row still decoding: every token so far (the repetition penalty reads the prompt too, as generate's does).
        seen = torch.full((rows, prompt_len + max_new), pad, dtype=ids.dtype, device=device)
        seen[:, :prompt_len] = ids.repeat_interleave(G, dim=0)
        active = torch.arange(rows, device=device)  # the output row of each row still decoding
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        # Outputs, in output rows.
        tokens = torch.full((rows, max_new), pad, dtype=torch.long, device=device)
        logps = torch.zeros((rows, max_new), dtype=torch.float32, device=device)
        invalid = torch.zeros((), dtype=torch.bool, device=device)
        suppress = torch.tensor(encoder.suppressed_token_ids(), dtype=torch.long, device=device)
        generator = self._sampling_generator(device) if settings.do_sample else None
        every = self._check_interval(device, generator, settings.do_sample)
        states: list[torch.Tensor] = []  # generator state after each step since the last check
        checked = 0  # steps done at the last check
        steps = 0
        for t in range(max_new):
            scores = filter_scores(logits, seen[:, : prompt_len + t], suppress, do_sample=settings.do_sample,
                                   temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                                   repetition_penalty=settings.repetition_penalty)
            if settings.do_sample:
                noise = torch.empty((rows, scores.shape[-1]), dtype=scores.dtype, device=device)
                noise.exponential_(generator=generator)
                if every > 1:
                    states.append(generator.get_state())
                nxt, bad = exponential_race(scores, noise if active.numel() == rows else noise[active])
            else:
                nxt, bad = greedy(scores)
            invalid |= (bad & ~done).any()
            nxt = nxt.masked_fill(done, pad)
            if settings.return_logps:  # log softmax(logits / T) of the chosen token, without a [rows, vocab] result
                raw = logits / settings.temperature if settings.do_sample else logits
                logps[active, t] = raw.gather(1, nxt[:, None]).squeeze(1) - raw.logsumexp(dim=-1)
            tokens[active, t] = nxt
            done |= nxt == eos
            steps = t + 1
            if self.on_tokens is not None and self.on_tokens(tokens[:, t]):
                break
            if steps == max_new:
                break
            if steps % every == 0:
                flags = torch.cat([done, invalid.view(1)]).cpu()  # the only host sync of these steps
                finished = flags[:-1]
                _raise_if_invalid(flags[-1], steps)
                if bool(finished.all()):
                    break
                states.clear()
                checked = steps
                if bool(finished.any()):  # drop finished rows from the batch and the KV cache
                    keep = (~finished).nonzero().squeeze(1).to(device)
                    decoder.select_rows(keep)
                    seen, active, done, nxt = seen[keep], active[keep], done[keep], nxt[keep]
            seen[:, prompt_len + t] = nxt
            logits = decoder.step(nxt, t)
        _raise_if_invalid(invalid, steps)
        width = steps
        is_eos = tokens[:, :steps] == eos
        if bool(is_eos.any(dim=1).all()):  # every row stopped: the output ends at the step the last one did
            last_stop = int(is_eos.int().argmax(dim=1).max())
            width = last_stop + 1
            if states and last_stop < steps - 1:  # rewind the draws made after it
                generator.set_state(states[last_stop - checked])
        return _finish(encoder, tokens[:, :width], logps[:, :width])


class GrowingCacheDecoder:
    """Decoding through the model's own forward and its growing KV cache, for the models :class:`StaticDecoder`
    cannot run; the same interface (``step``, ``select_rows``)."""

    def __init__(self, model: nn.Module, cache: Any, attention_mask: torch.Tensor, first_position: torch.Tensor,
                 repeats: int, max_new_tokens: int):
        compat.repeat_cache(cache, repeats)
        self.model, self.cache = model, cache
        batch, self.prompt_len = attention_mask.shape
        # the attention mask of every row, filled ahead, and the RoPE position of its first new token
        self.mask = torch.ones((batch * repeats, self.prompt_len + max_new_tokens), dtype=attention_mask.dtype,
                               device=attention_mask.device)
        self.mask[:, : self.prompt_len] = attention_mask.repeat_interleave(repeats, dim=0)
        self.first_position = first_position.repeat_interleave(repeats, dim=0)

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only rows ``keep`` (a 1-D index tensor, in that order)."""
        compat.select_cache_rows(self.cache, keep)
        self.mask, self.first_position = self.mask[keep], self.first_position[keep]

    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        """Logits [rows, vocab] (float32) after feeding ``tokens`` [rows] as completion token ``t`` of every row."""
        logits, self.cache = compat.forward_with_cache(
            self.model, input_ids=tokens[:, None], attention_mask=self.mask[:, : self.prompt_len + t + 1],
            position_ids=(self.first_position + t)[None].expand(3, -1, -1), cache=self.cache)
        return logits[:, -1].float()


def _raise_if_invalid(invalid: torch.Tensor, step: int) -> None:
    if bool(invalid):
        raise RuntimeError(f"the model's next-token scores hold NaN for a row still decoding (within the first {step} "
                           "steps): its weights or inputs are not finite")


class HFGenerateEngine:
    """``model.generate(num_return_sequences=G)``: re-encodes each image and re-prefills each prompt G times.

    With ``return_logps`` the sampled tokens' log-probs come from one teacher-forced pass over the completions after
    generation (``teacher_forced_logps``), not from ``output_logits``: generate would keep every step's [rows, vocab]
    float32 logits until it returns (about 20 GB for 16 rows x 2048 tokens of Qwen's vocabulary), while the pass
    costs one forward over the completions, holds at most ``selected_token_logps``'s chunk of logits, and gives the
    same numbers (``tests/test_rollout.py``).
    """

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
            repetition_penalty=settings.repetition_penalty, return_dict_in_generate=True,
        )
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        was_training = model.training
        model.eval()
        try:
            out = model.generate(**inputs, **kwargs)
            tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
            rollouts = _finish(encoder, tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device))
            if settings.return_logps:
                temperature = settings.temperature if settings.do_sample else 1.0
                rollouts.sampling_logps = teacher_forced_logps(model, batch, rollouts.completion_ids,
                                                               rollouts.completion_mask, settings.num_generations,
                                                               temperature)
        finally:
            model.train(was_training)
        return rollouts


def teacher_forced_logps(model: nn.Module, prompts: dict[str, Any], completion_ids: torch.Tensor,
                         completion_mask: torch.Tensor, group: int, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)`` of each completion token under ``model`` ([P*G, Lc], 0 where masked), by
    one teacher-forced pass with each prompt's images encoded once."""
    features = None if is_fsdp2(model) else shared_image_features(model, prompts)
    policy, predict = build_policy_batch(prompts, completion_ids, completion_mask, group, features)
    return token_logps(model, policy, predict, temperature)[:, -completion_ids.shape[1] :]


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
