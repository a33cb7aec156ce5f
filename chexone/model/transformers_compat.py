"""Every call chexone makes into a Qwen2.5-VL model beyond ``from_pretrained``, ``generate`` and ``save_pretrained``.

transformers changes the multimodal forward between minor releases: 5.24 renamed ``past_key_values`` to ``cache`` (the
old name is deprecated until 5.40) and started calling ``to_tuple()`` on the encoder outputs given as
``mm_encoder_outputs``, which broke code that passed its own objects there. So chexone talks to the model only through
pieces that have stayed put across the supported range, and does the multimodal glue itself:

* image features come from ``model.model.get_image_features(pixel_values, image_grid_thw)`` (one tensor per image),
* positions come from ``model.model.get_rope_index`` (multimodal RoPE) or the attention mask (text only), and are
  always passed explicitly, so the model's own stateful ``rope_deltas`` cache is never consulted,
* image features enter as ``inputs_embeds`` (token embeddings with the image rows scattered in),
* the decoder runs through ``model.model(inputs_embeds=..., attention_mask=..., position_ids=...)`` or, with a KV cache,
  ``model(...)`` with whichever name the installed release gives the cache argument.

``RELIES_ON`` lists each of these; ``tests/test_transformers_compat.py`` checks every one against the installed
transformers, so an upstream change fails there first, with the name of what moved.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: What this module relies on in transformers (checked by tests/test_transformers_compat.py).
RELIES_ON = (
    "Qwen2_5_VLForConditionalGeneration.model (Qwen2_5_VLModel) with .visual, .language_model",
    "Qwen2_5_VLModel.get_image_features(pixel_values, image_grid_thw) -> per-image features "
    "(a tuple, or an output whose pooler_output is that tuple)",
    "Qwen2_5_VLModel.get_rope_index(input_ids, mm_token_type_ids=, image_grid_thw=, attention_mask=) -> "
    "(position_ids [3, B, T], rope_deltas [B, 1])",
    "Qwen2_5_VLModel.forward(inputs_embeds=, attention_mask=, position_ids=, use_cache=) -> last_hidden_state",
    "Qwen2_5_VLForConditionalGeneration.forward(input_ids= | inputs_embeds=, attention_mask=, position_ids=, "
    "use_cache=True, logits_to_keep=, cache= | past_key_values=) -> logits and the cache "
    "(output field cache | past_key_values)",
    "config.image_token_id; get_input_embeddings()",
    "Cache.batch_repeat_interleave(n)",
    "Cache.batch_select_indices(indices)",
    "Qwen2_5_VLModel.forward(position_ids=[4, B, T] (text positions first), attention_mask=None): packed sequences "
    "(text positions restart at 0 for each) attend only within their own sequence, for every attention kernel "
    "(sdpa/eager build a block-causal mask, flash_attention_2 runs varlen)",
    "Qwen2_5_VLModel.visual(pixel_values, grid_thw=) -> last_hidden_state (the blocks' output, before .merger) and "
    "pooler_output = .merger(last_hidden_state) rows reordered (the reorder read back through a forward hook on .merger)",
    "Qwen2_5_VLModel.forward(attention_mask=<4D mask>): a ready 4D mask is used as given "
    "(sdpa: bool, True = attend; eager: additive float); config._attn_implementation names the kernel",
    "Qwen2_5_VLModel.language_model: .embed_tokens, .rotary_emb(x, position_ids [3, B, T]) -> (cos, sin), .norm and "
    ".layers[i] with .input_layernorm / .post_attention_layernorm (RMSNorm: .weight, .variance_epsilon), "
    ".self_attn.{q,k,v,o}_proj (nn.Linear; q/k/v with bias) and .mlp.{gate,up,down}_proj + .act_fn; "
    "Qwen2_5_VLForConditionalGeneration.lm_head",
    "Cache.layers[i].keys / .values: [B, kv_heads, T, head_dim] after a forward with use_cache=True",
    "Qwen2_5_VLModel.visual.patch_embed.proj: the patch nn.Conv3d (kernel = stride), called on [N, C, T, P, P] "
    "patches with its output viewed as [N, embed_dim]",
    "PreTrainedModel.save_pretrained asks the model's should_save_on_this_rank(is_main_process) whether to write "
    "(5.x: False on every rank but 0 once torch.distributed is initialized, and then writes nothing)",
)


class ModelAPIError(RuntimeError):
    """The installed transformers does not offer what chexone relies on; the message names the missing piece."""


def vision_dtype(model: nn.Module) -> torch.dtype:
    return next(model.model.visual.parameters()).dtype


def image_features(model: nn.Module, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
    """Merged vision features, one ``[tokens_i, hidden]`` tensor per image (gradients flow into the merger)."""
    out = model.model.get_image_features(pixel_values.to(vision_dtype(model)), image_grid_thw)
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, torch.Tensor):  # one concatenated tensor: split it per image ourselves
        merge = int(model.model.visual.spatial_merge_size) ** 2
        feats = torch.split(feats, (image_grid_thw.prod(-1) // merge).tolist())
    feats = list(feats)
    if len(feats) != int(image_grid_thw.shape[0]):
        raise ModelAPIError(f"get_image_features returned {len(feats)} feature tensors for "
                            f"{int(image_grid_thw.shape[0])} images")
    return feats


def vision_tower_states(model: nn.Module, pixel_values: torch.Tensor,
                        image_grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the vision blocks' output before the merger, the row order the merger's output is put in), without gradient.

    With a frozen vision tower these states are the same in every pass of a GRPO step, so they are computed once and
    only the (trained) merger runs again: ``merge_vision_states``. The order is read back by replacing the merger's
    output with row numbers for this one call (a forward hook), so no internal function of transformers is needed.
    """
    visual = model.model.visual
    captured: dict[str, torch.Tensor] = {}

    def number_rows(module, args, output):
        captured["states"] = args[0]
        return torch.arange(output.shape[0], device=output.device)[:, None].expand(-1, output.shape[1])

    handle = visual.merger.register_forward_hook(number_rows)
    try:
        with torch.no_grad():
            out = visual(pixel_values.to(vision_dtype(model)), grid_thw=image_grid_thw)
    finally:
        handle.remove()
    order = getattr(out, "pooler_output", None)
    if "states" not in captured or not isinstance(order, torch.Tensor):
        raise ModelAPIError("the vision tower did not run its .merger on the blocks' output as expected")
    return captured["states"], order[:, 0].long()


def merge_vision_states(model: nn.Module, states: torch.Tensor, order: torch.Tensor,
                        image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
    """``image_features`` from ``vision_tower_states``: the merger (with gradients) on the saved states, rows put in
    the tower's order, one tensor per image."""
    merged = model.model.visual.merger(states)[order]
    merge = int(model.model.visual.spatial_merge_size) ** 2
    return list(torch.split(merged, (image_grid_thw.prod(-1) // merge).tolist()))


def text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions [3, B, T] of a text-only batch: 0, 1, 2 ... over the attended tokens (left padding skipped)."""
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return pos[None].expand(3, -1, -1)


def rope_positions(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   image_grid_thw: torch.Tensor | None = None,
                   mm_token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(position_ids [3, B, T], rope_deltas [B, 1]) for a batch; the deltas continue positions during decoding
    (next position = attended tokens so far + delta)."""
    if image_grid_thw is None:
        return text_positions(attention_mask), torch.zeros(input_ids.shape[0], 1, dtype=torch.long,
                                                           device=input_ids.device)
    if mm_token_type_ids is None:
        mm_token_type_ids = (input_ids == model.config.image_token_id).to(torch.int32)
    positions, deltas = model.model.get_rope_index(input_ids, mm_token_type_ids=mm_token_type_ids,
                                                   image_grid_thw=image_grid_thw, attention_mask=attention_mask)
    return positions, deltas.to(input_ids.device).view(-1, 1)


def embed_inputs(model: nn.Module, input_ids: torch.Tensor,
                 features: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Token embeddings with the image features scattered over the ``<|image_pad|>`` positions, in order."""
    embeds = model.get_input_embeddings()(input_ids)
    if not features:
        return embeds
    feats = torch.cat(list(features), dim=0).to(embeds.device, embeds.dtype)
    mask = input_ids == model.config.image_token_id
    n_tokens = int(mask.sum())
    if n_tokens != feats.shape[0]:
        raise ValueError(f"the prompts hold {n_tokens} image tokens but their images give {feats.shape[0]} "
                         "feature rows (image placeholders and pixel grids disagree)")
    return embeds.masked_scatter(mask[..., None].expand_as(embeds), feats)


def decoder_hidden_states(model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                          position_ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states [B, T, H] of the language model for ready-made embeddings and positions (no cache)."""
    out = model.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False, return_dict=True)
    return out.last_hidden_state


def packed_hidden_states(model: nn.Module, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                         text_positions: torch.Tensor) -> torch.Tensor:
    """Last hidden states [R, L, H] of rows that each hold several sequences back to back (padding-free packing).

    ``text_positions`` [R, L] restart at 0 where a sequence starts; with no 2D attention mask the model derives
    block-causal attention from them (each token sees only earlier tokens of its own sequence), whatever the attention
    kernel: a mask for sdpa/eager, varlen attention for FlashAttention-2. ``position_ids`` [3, R, L] are the
    multimodal RoPE positions of each sequence as if it stood alone.
    """
    positions = torch.cat([text_positions[None].to(position_ids), position_ids], dim=0)
    out = model.model(inputs_embeds=inputs_embeds, attention_mask=None, position_ids=positions, use_cache=False,
                      return_dict=True)
    return out.last_hidden_state


#: Attention kernels that take an arbitrary 4D mask (``masked_hidden_states``).
CUSTOM_MASK_KERNELS = ("sdpa", "eager")


def attention_kernel(model: nn.Module) -> str:
    """The attention implementation the loaded model runs (``sdpa``, ``eager``, ``flash_attention_2`` ...)."""
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


def masked_hidden_states(model: nn.Module, inputs_embeds: torch.Tensor, allowed: torch.Tensor,
                         position_ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states [R, L, H] where token q attends token k iff ``allowed[r, q, k]`` (a [R, L, L] bool tensor;
    every query row must allow at least one key). Only for ``CUSTOM_MASK_KERNELS``."""
    kernel = attention_kernel(model)
    if kernel == "sdpa":
        mask = allowed[:, None]
    elif kernel == "eager":
        mask = torch.zeros(allowed.shape, dtype=inputs_embeds.dtype, device=inputs_embeds.device)
        mask = mask.masked_fill(~allowed, torch.finfo(inputs_embeds.dtype).min)[:, None]
    else:
        raise ModelAPIError(f"a custom attention mask needs one of {CUSTOM_MASK_KERNELS}, not {kernel}")
    return decoder_hidden_states(model, inputs_embeds, mask, position_ids)


@functools.lru_cache(maxsize=None)
def cache_argument(model_class: type) -> str:
    """The name the installed release gives the KV-cache argument of ``forward``: ``cache`` (5.24+) or
    ``past_key_values`` (before)."""
    params = inspect.signature(model_class.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise ModelAPIError(f"{model_class.__name__}.forward takes neither `cache` nor `past_key_values`")


def _cache_of(out: Any) -> Any:
    for name in ("cache", "past_key_values"):  # ModelOutput holds its non-None fields as dict keys
        if name in out:
            return out[name]
    raise ModelAPIError(f"{type(out).__name__} carries no KV cache (looked for `cache` and `past_key_values`)")


def forward_with_cache(model: nn.Module, *, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                       cache: Any = None, logits_to_keep: int = 1) -> tuple[torch.Tensor, Any]:
    """One decoding forward: (logits of the last ``logits_to_keep`` positions, the updated KV cache)."""
    kwargs: dict[str, Any] = {}
    if cache is not None:
        kwargs[cache_argument(type(model))] = cache
    out = model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=position_ids, use_cache=True, logits_to_keep=logits_to_keep, return_dict=True, **kwargs)
    return out.logits, _cache_of(out)


@dataclass(frozen=True)
class DecoderLayerParts:
    input_norm: nn.Module
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    post_norm: nn.Module
    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear
    act_fn: Any


@dataclass(frozen=True)
class DecoderParts:
    """The text decoder's pieces, for code that runs its arithmetic itself (chexone.model.static_decode)."""

    embed_tokens: nn.Module
    rotary_emb: nn.Module
    layers: tuple[DecoderLayerParts, ...]
    norm: nn.Module
    lm_head: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: Any


def decoder_parts(model: nn.Module) -> DecoderParts:
    """The text decoder's modules, or :class:`ModelAPIError` naming what is missing or not a plain ``nn.Linear``
    (an adapter-wrapped projection, another architecture): callers then keep using the model's own forward."""
    try:
        lm, cfg = model.model.language_model, model.model.language_model.config
        layers = tuple(
            DecoderLayerParts(l.input_layernorm, l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj,
                              l.self_attn.o_proj, l.post_attention_layernorm, l.mlp.gate_proj, l.mlp.up_proj,
                              l.mlp.down_proj, l.mlp.act_fn)
            for l in lm.layers)
        heads = int(cfg.num_attention_heads)
        parts = DecoderParts(lm.embed_tokens, lm.rotary_emb, layers, lm.norm, model.lm_head, heads,
                             int(cfg.num_key_value_heads), int(cfg.hidden_size) // heads,
                             getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", False) else None)
    except AttributeError as err:
        raise ModelAPIError(f"the text decoder does not have the expected parts ({err})") from err
    for i, layer in enumerate(layers):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            if type(getattr(layer, name)) is not nn.Linear:
                raise ModelAPIError(f"layers[{i}].{name} is a {type(getattr(layer, name)).__name__}, not nn.Linear")
        for name in ("input_norm", "post_norm"):
            if not hasattr(getattr(layer, name), "variance_epsilon"):
                raise ModelAPIError(f"layers[{i}].{name} is not an RMSNorm with variance_epsilon")
    if type(parts.lm_head) is not nn.Linear:
        raise ModelAPIError(f"lm_head is a {type(parts.lm_head).__name__}, not nn.Linear")
    return parts


def vision_patch_projection(model: nn.Module) -> nn.Module:
    """The vision tower's patch projection (a ``Conv3d`` in Qwen2.5-VL)."""
    try:
        return model.model.visual.patch_embed.proj
    except AttributeError as err:
        raise ModelAPIError(f"the vision tower has no patch_embed.proj ({err})") from err


def set_vision_patch_projection(model: nn.Module, module: nn.Module) -> None:
    model.model.visual.patch_embed.proj = module


def cache_key_values(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the (keys, values) a KV cache holds: [B, kv_heads, T, head_dim] each."""
    try:
        return [(layer.keys, layer.values) for layer in cache.layers]
    except AttributeError as err:
        raise ModelAPIError(f"the KV cache ({type(cache).__name__}) does not expose .layers[i].keys/.values") from err


def repeat_cache(cache: Any, repeats: int) -> None:
    """Repeat every batch row of a KV cache ``repeats`` times in place (row i -> rows i*repeats ... ), so G samples
    continue from one prefill."""
    cache.batch_repeat_interleave(repeats)


def select_cache_rows(cache: Any, rows: torch.Tensor) -> None:
    """Keep only the batch rows ``rows`` (a 1-D index tensor, in that order) of a KV cache, in place: decoding drops
    finished rows so they stop costing compute."""
    cache.batch_select_indices(rows)


#: The files ``save_pretrained`` writes whatever the model: a directory without them was not saved.
SAVED_MODEL_FILES = (("config.json",), ("model.safetensors", "model.safetensors.index.json"))


def save_local_model(model: Any, directory: Any, **kwargs: Any) -> None:
    """``model.save_pretrained(directory)`` that writes on this process even when torch.distributed is initialized.

    transformers 5 writes a model only on global rank 0 once a process group exists, and silently writes nothing on
    the other ranks. That is right for a shared checkpoint, but wrong for a file a process builds for itself (the demo
    report scorers a rank builds on first use, a tiny model in a cache): there it left a half-written directory that
    the next reader failed on. Files missing after the save raise :class:`ModelAPIError` instead."""
    model.should_save_on_this_rank = lambda is_main_process=True: True  # shadows the method for this call only
    try:
        model.save_pretrained(directory, **kwargs)
    finally:
        del model.should_save_on_this_rank
    missing = [group[0] for group in SAVED_MODEL_FILES
               if not any(os.path.isfile(os.path.join(directory, name)) for name in group)]
    if missing:
        raise ModelAPIError(f"{type(model).__name__}.save_pretrained({str(directory)!r}) wrote no {', '.join(missing)}"
                            " (transformers' should_save_on_this_rank may have moved)")


__all__ = [
    "CUSTOM_MASK_KERNELS", "RELIES_ON", "DecoderLayerParts", "DecoderParts", "ModelAPIError", "attention_kernel",
    "cache_argument", "cache_key_values", "decoder_hidden_states", "decoder_parts",
    "embed_inputs", "forward_with_cache", "image_features", "masked_hidden_states", "merge_vision_states",
    "packed_hidden_states", "repeat_cache", "rope_positions", "select_cache_rows", "text_positions", "vision_dtype",
    "set_vision_patch_projection", "vision_patch_projection", "vision_tower_states", "SAVED_MODEL_FILES",
    "save_local_model",
]
