"""Token-by-token decoding with a preallocated KV cache and the text decoder's arithmetic written out.

Why: when every row adds one token per step, the model's generic forward spends most of a step outside arithmetic:
module dispatch, building a 4D mask, growing the KV cache by concatenation (a copy of the whole cache per layer and
step). On the tiny model that overhead is about as large as the arithmetic itself. :class:`StaticDecoder` does the
same arithmetic — the model's own modules (projections, RMSNorm, rotary embedding, activation; their hooks run) — with
keys and values written in place into buffers sized for the whole completion, so a step costs the arithmetic plus a
few tensor launches. Its logits equal the model's forward to float tolerance (tests/test_static_decode.py).

It takes over after the prefill (which the model's own forward runs: images, multimodal positions) and supports what
``chexone.model.transformers_compat.decoder_parts`` finds: Qwen2.5-VL's text decoder with plain linear projections and
full attention. Anything else (an adapter-wrapped projection, sliding-window attention) keeps the model's forward;
:func:`static_decoder_problem` says why.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chexone.model import transformers_compat as compat


def static_decoder_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot decode through :class:`StaticDecoder`, or None when it can (sharded weights are the
    caller's to check: a step reads every layer's full weights)."""
    try:
        parts = compat.decoder_parts(model)
    except compat.ModelAPIError as err:
        return str(err)
    if parts.sliding_window is not None:
        return "the model uses sliding-window attention"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class StaticDecoder:
    """Continues decoding from a prefill's KV cache, each prompt's cache repeated for its ``repeats`` rows.

    ``attention_mask`` [B, L] is the prompts' mask (0 = padding), ``first_position`` [B, 1] the RoPE position of each
    prompt's first new token. :meth:`step` feeds one token per row and returns the next-token logits (float32);
    :meth:`select_rows` drops finished rows.
    """

    def __init__(self, model: nn.Module, cache: Any, attention_mask: torch.Tensor, first_position: torch.Tensor,
                 repeats: int, max_new_tokens: int):
        self.parts = compat.decoder_parts(model)
        batch, prompt_len = attention_mask.shape
        rows, width = batch * repeats, prompt_len + max_new_tokens
        self.prompt_len = prompt_len
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for k, v in compat.cache_key_values(cache):
            for src, out in ((k, self.keys), (v, self.values)):
                buf = src.new_empty((batch, repeats, src.shape[1], width, src.shape[3]))
                buf[:, :, :, :prompt_len] = src[:, None, :, :prompt_len]
                out.append(buf.view(rows, src.shape[1], width, src.shape[3]))
        # True = attend. Completion positions are all True: a step only attends to the positions written so far.
        self.mask = torch.ones((rows, width), dtype=torch.bool, device=attention_mask.device)
        self.mask[:, :prompt_len] = attention_mask.bool().repeat_interleave(repeats, dim=0)
        self.first_position = first_position.repeat_interleave(repeats, dim=0)

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only rows ``keep`` (a 1-D index tensor, in that order)."""
        self.keys = [k.index_select(0, keep) for k in self.keys]
        self.values = [v.index_select(0, keep) for v in self.values]
        self.mask = self.mask.index_select(0, keep)
        self.first_position = self.first_position.index_select(0, keep)

    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        """Logits [rows, vocab] after feeding ``tokens`` [rows] as completion token ``t`` (0-based) of every row."""
        p = self.parts
        rows, heads, kv_heads, dim = tokens.shape[0], p.num_heads, p.num_kv_heads, p.head_dim
        slot, seen = self.prompt_len + t, self.prompt_len + t + 1
        x = p.embed_tokens(tokens[:, None])  # [rows, 1, hidden]
        positions = (self.first_position + t)[None].expand(3, -1, -1)  # text tokens: the same position on all 3 axes
        cos, sin = p.rotary_emb(x, positions)
        cos, sin = cos[:, None], sin[:, None]  # [rows, 1 (heads), 1, dim]
        allowed = self.mask[:, None, None, :seen]
        for layer, keys, values in zip(p.layers, self.keys, self.values):
            h = layer.input_norm(x)
            q = layer.q_proj(h).view(rows, 1, heads, dim).transpose(1, 2)
            k = layer.k_proj(h).view(rows, 1, kv_heads, dim).transpose(1, 2)
            v = layer.v_proj(h).view(rows, 1, kv_heads, dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys[:, :, slot] = k[:, :, 0]
            values[:, :, slot] = v[:, :, 0]
            attn = F.scaled_dot_product_attention(q, keys[:, :, :seen], values[:, :, :seen], attn_mask=allowed,
                                                  enable_gqa=heads != kv_heads)
            x = x + layer.o_proj(attn.transpose(1, 2).reshape(rows, 1, heads * dim))
            h = layer.post_norm(x)
            x = x + layer.down_proj(layer.act_fn(layer.gate_proj(h)) * layer.up_proj(h))
        return p.lm_head(p.norm(x)[:, 0]).float()


__all__ = ["StaticDecoder", "static_decoder_problem"]
