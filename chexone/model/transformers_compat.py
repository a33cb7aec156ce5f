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


def repeat_cache(cache: Any, repeats: int) -> None:
    """Repeat every batch row of a KV cache ``repeats`` times in place (row i -> rows i*repeats ... ), so G samples
    continue from one prefill."""
    cache.batch_repeat_interleave(repeats)


__all__ = [
    "RELIES_ON", "ModelAPIError", "cache_argument", "decoder_hidden_states", "embed_inputs", "forward_with_cache",
    "image_features", "repeat_cache", "rope_positions", "text_positions", "vision_dtype",
]
