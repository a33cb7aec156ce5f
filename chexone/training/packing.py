"""Padding-free SFT: the samples of a right-padded micro-batch packed back to back into fewer rows.

The collator still produces the ordinary padded batch (token ids, labels, pixels are cheap); only the decoder — where
the compute is — runs on the packed rows. Embeddings (image features scattered in) and multimodal RoPE positions are
computed on the padded layout, exactly as without packing, and then gathered into the packed rows, so every sample
keeps its own positions. Attention stays inside each sample (``transformers_compat.packed_hidden_states``): the loss
equals the unpacked loss to float tolerance (tests/test_packing.py).

Row capacity: FlashAttention-2 runs varlen attention, so one row holds the whole micro-batch (no padding at all).
sdpa/eager build a [L, L] mask per row, whose cost grows with the row's square; there rows are filled up to the
longest sample's length (first-fit decreasing), which never does more attention work than the padded batch and
removes most of the padding in the linear layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chexone.model import transformers_compat as compat


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices (longest first), each bin's lengths summing to at most ``capacity``; within a bin the
    items keep their original order. An item longer than ``capacity`` gets a bin of its own."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return [sorted(b) for b in bins]


@dataclass
class PackedLayout:
    """Where each token of the padded [B, T] batch goes in the packed [R, L] rows."""

    rows: int
    width: int
    #: [R * L] flat index into the padded batch's [B * T] tokens for each packed slot (0 for empty slots).
    source: torch.Tensor
    #: [R * L] whether the slot holds a token.
    filled: torch.Tensor
    #: [B, T] flat packed slot of each padded token (-1 for padding).
    target: torch.Tensor
    #: [R, L] text positions: 0, 1, ... within each sample, restarting at each sample; a row's empty tail continues
    #: its last sample's count.
    text_positions: torch.Tensor


def plan_packing(attention_mask: torch.Tensor, capacity: int | None = None) -> PackedLayout:
    """Pack the rows of a right-padded batch (``attention_mask`` [B, T], ones then zeros) into rows of at most
    ``capacity`` tokens (default: the longest row; ``0`` or negative: a single row)."""
    B, T = attention_mask.shape
    lengths = attention_mask.sum(-1).tolist()
    if any(int(attention_mask[b, :n].sum()) != n for b, n in enumerate(lengths)):
        raise ValueError("packing needs a right-padded batch (attention mask ones, then zeros)")
    cap = max(lengths) if capacity is None else (sum(lengths) if capacity <= 0 else max(capacity, max(lengths)))
    bins = first_fit_decreasing(lengths, cap)
    width = max(sum(lengths[i] for i in b) for b in bins)
    R = len(bins)
    source = torch.zeros(R * width, dtype=torch.long)
    filled = torch.zeros(R * width, dtype=torch.bool)
    target = torch.full((B, T), -1, dtype=torch.long)
    text = torch.zeros(R, width, dtype=torch.long)
    for r, members in enumerate(bins):
        col = 0
        for b in members:
            n = lengths[b]
            slots = torch.arange(r * width + col, r * width + col + n)
            source[slots] = b * T + torch.arange(n)
            filled[slots] = True
            target[b, :n] = slots
            text[r, col : col + n] = torch.arange(n)
            col += n
        # The empty tail continues the row's last sample: causal attention keeps that sample from seeing it, and
        # nothing reads the tail's outputs. A row holding one sample then is one plain causal sequence, and when
        # every row is, the model needs no block mask at all (sdpa runs its causal kernel).
        text[r, col:] = torch.arange(lengths[members[-1]], lengths[members[-1]] + width - col)
    device = attention_mask.device
    return PackedLayout(R, width, source.to(device), filled.to(device), target.to(device), text.to(device))


def packing_capacity(model: nn.Module, requested: int | None) -> int | None:
    """Row capacity for ``plan_packing``: the recipe's ``data.pack_length`` when set (> 0), else one row per
    micro-batch with varlen FlashAttention-2 and the longest sample with mask-based kernels (see module doc)."""
    if requested:
        return requested
    return 0 if compat.attention_kernel(model).startswith("flash_attention") else None


def packed_hidden_states(model: nn.Module, batch: dict[str, Any], capacity: int | None = None,
                         positions: torch.Tensor | None = None) -> tuple[torch.Tensor, PackedLayout]:
    """(hidden states [R * L, H] of the packed rows, flattened; the layout) for a right-padded batch.

    The hidden state of padded token (b, t) is ``hidden[layout.target[b, t]]``.
    """
    from chexone.training.core import batch_positions

    layout = plan_packing(batch["attention_mask"], capacity)
    features = batch.get("image_features")
    if features is None and batch.get("pixel_values") is not None:
        features = compat.image_features(model, batch["pixel_values"], batch["image_grid_thw"])
    embeds = compat.embed_inputs(model, batch["input_ids"], features)  # [B, T, H], padded layout
    if positions is None:
        positions = batch_positions(model, batch)  # [3, B, T]: each sample's own multimodal positions
    H = embeds.shape[-1]
    packed = embeds.reshape(-1, H)[layout.source].reshape(layout.rows, layout.width, H)
    pos = positions.reshape(3, -1)[:, layout.source].reshape(3, layout.rows, layout.width)
    pos = torch.where(layout.filled.reshape(layout.rows, layout.width)[None], pos, layout.text_positions[None])
    hidden = compat.packed_hidden_states(model, packed, pos, layout.text_positions)
    return hidden.reshape(-1, hidden.shape[-1]), layout


def packed_sft_loss(model: nn.Module, batch: dict[str, Any], capacity: int | None = None,
                    ignore_index: int = -100) -> tuple[torch.Tensor, int]:
    """``core.sft_loss`` computed on packed rows: the same mean token cross-entropy over the answer tokens, scored by
    the same chunked ``selected_token_logps``."""
    from chexone.training.core import selected_token_logps

    labels = batch["labels"]
    mask = labels != ignore_index
    hidden, layout = packed_hidden_states(model, batch, capacity)
    predict_from = layout.target[:, :-1][mask[:, 1:]]  # the packed slot of the token before each answer token
    targets = labels[:, 1:][mask[:, 1:]]
    n = int(targets.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    logps, _ = selected_token_logps(model.lm_head, hidden[predict_from], targets)
    return -logps.mean(), n


__all__ = ["PackedLayout", "first_fit_decreasing", "packed_hidden_states", "packed_sft_loss", "packing_capacity",
           "plan_packing"]
