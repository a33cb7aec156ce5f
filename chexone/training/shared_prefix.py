"""GRPO teacher-forced passes with each prompt computed once per group (not once per completion).

The G completions of a prompt share it: the naive batch repeats the prompt (and its image tokens) G times, which is
74-90% of the policy pass's tokens at the paper's shapes. Here a row holds the prompt once, followed by several of its
completions back to back; an attention mask lets each completion see the prompt and its own earlier tokens only, and
its RoPE positions continue from the prompt's end as if it stood alone. The log-probs and their gradients equal the
per-completion pass to float tolerance (tests/test_shared_prefix.py): the prompt's hidden states are the same for every
completion, so computing them once and letting all G attend to them is the same function.

How many completions share a row: a dense attention kernel (sdpa/eager) computes the whole [L, L] score matrix of a
row, masked blocks included, so very long rows trade the saved prompt copies for wasted attention. ``completions_per_row``
picks the count that minimises a FLOP estimate (linear layers per token + attention per query/key pair) from the
model's config. With one completion per row (long completions, short prompts) a row is a plain causal sequence and runs
the model's own causal attention, without a custom mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chexone.model import transformers_compat as compat


def supports_shared_prefix(model: nn.Module) -> tuple[bool, str]:
    """(usable, why not): the custom mask needs an sdpa/eager kernel and a model whose forward we may enter below the
    root (FSDP2 gathers parameters in the root's forward)."""
    from chexone.training.core import is_fsdp2

    if is_fsdp2(model):
        return False, "FSDP2 sharding (the forward must go through the root module)"
    kernel = compat.attention_kernel(model)
    if kernel not in compat.CUSTOM_MASK_KERNELS:
        return False, f"attention kernel {kernel} takes no custom mask (sdpa and eager do)"
    return True, ""


def _text_config(model: nn.Module) -> Any:
    cfg = model.config
    return getattr(cfg, "text_config", None) or cfg


def completions_per_row(model: nn.Module, prompt_length: int, completion_length: int, group: int) -> int:
    """The number k of completions per row (1 <= k <= group) minimising the estimated FLOPs of a group's pass:
    ceil(G / k) rows of L = prompt + k * completion tokens, each costing L * (linear FLOPs per token) + L^2 * (attention
    FLOPs per query/key pair). Dense kernels pay for masked pairs too, hence the L^2."""
    tc = _text_config(model)
    d, layers = int(tc.hidden_size), int(tc.num_hidden_layers)
    heads, kv_heads = int(tc.num_attention_heads), int(getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads)
    ffn = int(getattr(tc, "intermediate_size", 4 * d))
    head_dim = d // heads
    per_token = layers * 2 * (d * d * 2 + 2 * d * kv_heads * head_dim + 3 * d * ffn)  # q,o + k,v + gated MLP
    per_pair = layers * 4 * d  # q.k and p.v, multiply-adds
    best, best_cost = 1, None
    for k in range(1, group + 1):
        rows = -(-group // k)
        length = prompt_length + k * completion_length
        cost = rows * (length * per_token + length * length * per_pair)
        if best_cost is None or cost < best_cost:
            best, best_cost = k, cost
    return best


@dataclass
class SharedPrefixLayout:
    """Rows of [prompt, completion, completion, ...] and where every token comes from / is predicted from."""

    rows: int
    width: int
    #: [R * W] flat index into cat(prompt tokens [P * Tp], completion tokens [P * G * Lc]) per slot (0 when empty)
    source: torch.Tensor
    #: [R, W] 0 = prompt, g + 1 = the row's g-th completion, -1 = empty slot
    segment: torch.Tensor
    #: [P * G, Lc] the slot whose hidden state predicts each completion token (-1 where not predicted)
    predict_from: torch.Tensor


def plan_rows(prompt_mask: torch.Tensor, completion_mask: torch.Tensor, group: int,
              per_row: int) -> SharedPrefixLayout:
    """Lay out P left-padded prompts and their P * G right-padded completions (prompt-major) into rows of one prompt
    followed by up to ``per_row`` of its completions (only real tokens, no padding in between)."""
    P, Tp = prompt_mask.shape
    Lc = completion_mask.shape[1]
    n_prompt = prompt_mask.sum(-1).tolist()
    n_comp = completion_mask.sum(-1).tolist()
    rows: list[tuple[int, list[int]]] = []
    for p in range(P):
        for start in range(0, group, per_row):
            rows.append((p, list(range(p * group + start, p * group + min(group, start + per_row)))))
    width = max(n_prompt[p] + sum(n_comp[c] for c in members) for p, members in rows)
    R = len(rows)
    source = torch.zeros(R * width, dtype=torch.long)
    segment = torch.full((R, width), -1, dtype=torch.long)
    predict_from = torch.full((P * group, Lc), -1, dtype=torch.long)
    offset = P * Tp  # completion tokens come after the prompt tokens in the flat source
    for r, (p, members) in enumerate(rows):
        base = r * width
        n = n_prompt[p]
        source[base : base + n] = p * Tp + torch.arange(Tp - n, Tp)  # left padding: the real tokens are at the end
        segment[r, :n] = 0
        last_prompt_slot = base + n - 1
        col = n
        for j, c in enumerate(members):
            m = n_comp[c]
            source[base + col : base + col + m] = offset + c * Lc + torch.arange(m)
            segment[r, col : col + m] = j + 1
            if m:
                predict_from[c, 0] = last_prompt_slot
                predict_from[c, 1:m] = base + col + torch.arange(m - 1)
            col += m
    device = prompt_mask.device
    return SharedPrefixLayout(R, width, source.to(device), segment.to(device), predict_from.to(device))


def attention_allowed(segment: torch.Tensor) -> torch.Tensor:
    """[R, W, W]: query q sees key k when k <= q and k is the prompt or q's own completion (empty slots see the
    prompt, so no row of the mask is empty)."""
    W = segment.shape[1]
    causal = torch.ones(W, W, dtype=torch.bool, device=segment.device).tril()
    q, k = segment[:, :, None], segment[:, None, :]
    return causal & (k >= 0) & ((k == 0) | (k == q))


def shared_prefix_logps(model: nn.Module, prompts: dict[str, Any], completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, group: int, features: list[torch.Tensor] | None = None,
                        temperature: float = 1.0, with_entropy: bool = False, per_row: int | None = None):
    """Log-probs [P * G, Lc] of each completion token (0 where ``completion_mask`` is 0) from logits / temperature,
    and with ``with_entropy`` the predictive entropy there (no gradient) — the same values ``token_logps`` gives on
    ``build_policy_batch``'s per-completion batch, sliced to the completion columns.

    ``prompts`` is the left-padded prompt batch (input_ids, attention_mask, image_grid_thw, mm_token_type_ids);
    ``features`` its per-image features (``shared_image_features``) — without them pixels are encoded here.
    """
    from chexone.training.core import selected_token_logps

    ids, attn = prompts["input_ids"], prompts["attention_mask"]
    P, Tp = ids.shape
    Lc = completion_ids.shape[1]
    if features is None and prompts.get("pixel_values") is not None:
        features = compat.image_features(model, prompts["pixel_values"], prompts["image_grid_thw"])
    if per_row is None:
        per_row = completions_per_row(model, int(attn.sum(-1).max()), int(completion_mask.sum(-1).max()), group)
    layout = plan_rows(attn, completion_mask, group, per_row)

    prompt_embeds = compat.embed_inputs(model, ids, features)  # [P, Tp, H]
    completion_embeds = model.get_input_embeddings()(completion_ids)  # [P * G, Lc, H]
    H = prompt_embeds.shape[-1]
    flat = torch.cat([prompt_embeds.reshape(-1, H), completion_embeds.reshape(-1, H).to(prompt_embeds.dtype)])
    embeds = flat[layout.source].reshape(layout.rows, layout.width, H)

    prompt_pos, deltas = compat.rope_positions(model, ids, attn, prompts.get("image_grid_thw"),
                                               prompts.get("mm_token_type_ids"))
    # completion token t of prompt p: position n_prompt + t + delta on all three axes, as in decoding
    start = (attn.sum(-1, keepdim=True) + deltas.view(-1, 1)).repeat_interleave(group, dim=0)  # [P * G, 1]
    completion_pos = start + torch.arange(Lc, device=ids.device)[None]
    flat_pos = torch.cat([prompt_pos.reshape(3, -1), completion_pos.reshape(1, -1).expand(3, -1)], dim=1)
    positions = flat_pos[:, layout.source].reshape(3, layout.rows, layout.width)

    if per_row == 1:
        # [prompt, completion, empty tail]: plain causal attention gives every used output the mask's value (the
        # tail's outputs are never read), so the model runs its own causal kernel, which skips the masked half
        text = torch.arange(layout.width, device=ids.device)[None].expand(layout.rows, -1)
        hidden = compat.packed_hidden_states(model, embeds, positions, text)
    else:
        hidden = compat.masked_hidden_states(model, embeds, attention_allowed(layout.segment), positions)
    predicted = completion_mask.bool()
    selected = hidden.reshape(-1, H)[layout.predict_from[predicted]]
    logps, entropy = selected_token_logps(model.lm_head, selected, completion_ids[predicted], temperature,
                                          with_entropy=with_entropy)
    out = torch.zeros(completion_ids.shape, dtype=logps.dtype, device=logps.device).masked_scatter(predicted, logps)
    if not with_entropy:
        return out
    ent = torch.zeros(completion_ids.shape, dtype=entropy.dtype, device=entropy.device).masked_scatter(predicted,
                                                                                                       entropy)
    return out, ent


__all__ = ["SharedPrefixLayout", "attention_allowed", "completions_per_row", "plan_rows", "shared_prefix_logps",
           "supports_shared_prefix"]
