"""GRPO arithmetic (docs/method.md §2): reward combination, group-normalised advantages, the clipped-ratio loss with a k3
KL penalty, and the four loss aggregations peers use. Pure tensor code, tested against hand-computed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

SCALE_CHOICES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def combine_rewards(per_reward: dict[str, Sequence[float | None]], weights: dict[str, float]) -> list[float | None]:
    """Weighted sum over the rewards that apply to each sample (None = not applicable); None if none applies.

    Weight-0 rewards are logged only: they neither add to the total nor make a sample count as scored."""
    names = list(per_reward)
    n = len(per_reward[names[0]]) if names else 0
    out: list[float | None] = []
    for i in range(n):
        values = [(weights[name], per_reward[name][i]) for name in names
                  if per_reward[name][i] is not None and weights[name] != 0]
        out.append(sum(w * v for w, v in values) if values else None)
    return out


def group_advantages(rewards: Sequence[float | None], group_size: int, *, scale: str = "group",
                     eps: float = 1e-4) -> tuple[torch.Tensor, dict[str, float]]:
    """A_i = (r_i - mean_group(r)) / (std + eps), over consecutive groups of ``group_size``.

    ``scale``: "group" divides by the group's std (the paper), "batch" by the std of all rewards, "none" not at all.
    Samples with a None reward get advantage 0 and are left out of their group's statistics. Std is the unbiased
    (n-1) estimate, as TRL uses. Returns (advantages, stats) with ``frac_reward_zero_std``.
    """
    if scale not in SCALE_CHOICES:
        raise ValueError(f"scale_rewards={scale!r}; choose one of {SCALE_CHOICES}")
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    valid = torch.tensor([r is not None for r in rewards])
    r = torch.tensor([0.0 if x is None else float(x) for x in rewards], dtype=torch.float64)
    groups = r.view(-1, group_size)
    vmask = valid.view(-1, group_size).to(torch.float64)
    count = vmask.sum(1, keepdim=True)
    mean = (groups * vmask).sum(1, keepdim=True) / count.clamp(min=1)
    var = (((groups - mean) ** 2) * vmask).sum(1, keepdim=True) / (count - 1).clamp(min=1)
    std = var.sqrt()
    centered = (groups - mean) * vmask
    if scale == "group":
        adv = centered / (std + eps)
    elif scale == "batch":
        all_valid = r[valid]
        batch_std = all_valid.std() if all_valid.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
        adv = centered / (batch_std + eps)
    else:
        adv = centered
    has_group = count.squeeze(1) > 0
    zero_std = ((std.squeeze(1) < 1e-8) & has_group).sum().item()
    stats = {"frac_reward_zero_std": zero_std / max(1, int(has_group.sum().item()))}
    return adv.reshape(-1).to(torch.float32), stats


def zero_std_groups(rewards: Sequence[float | None], group_size: int) -> list[bool]:
    """Per group: True when all applicable rewards are equal (no learning signal)."""
    out = []
    for g in range(0, len(rewards), group_size):
        values = [x for x in rewards[g : g + group_size] if x is not None]
        out.append(len(values) == 0 or max(values) - min(values) < 1e-8)
    return out


@dataclass
class LossOutput:
    loss: torch.Tensor
    kl: float
    clip_low: float
    clip_high: float
    clip_region: float


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
) -> LossOutput:
    """Per-token clipped surrogate + β·k3-KL, aggregated as ``loss_type``.

    Shapes: logps/old_logps/ref_logps/mask [B, L] (mask 1 for completion tokens), advantages [B].
    Per token: -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) + β(exp(ref-logp) - (ref-logp) - 1), ρ = exp(logp - old).
    Aggregation: ``grpo`` mean over each sequence's tokens then over sequences; ``bnpo`` sum / tokens in this batch;
    ``dr_grpo`` sum / (B × max_completion_length); ``dapo`` sum / ``num_items_in_batch`` (tokens of the whole
    generation batch across ranks and accumulation steps). Gradients flow only through ``logps``.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}; choose one of {LOSS_TYPES}")
    mask = mask.to(logps.dtype)
    old_logps = old_logps.detach()
    ratio = torch.exp(logps - old_logps)
    adv = advantages.detach().to(logps.dtype).unsqueeze(1)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl_value = 0.0
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps")
        delta = ref_logps.detach() - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
        kl_value = float((kl.detach() * mask).sum() / mask.sum().clamp(min=1))
    total = (per_token * mask).sum()
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = total / mask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("dr_grpo needs max_completion_length")
        loss = total / (logps.shape[0] * max_completion_length)
    else:
        if not num_items_in_batch:
            raise ValueError("dapo needs num_items_in_batch (completion tokens in the whole generation batch)")
        loss = total / num_items_in_batch
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        stats = (float((low * mask).sum() / n), float((high * mask).sum() / n))
    return LossOutput(loss, kl_value, stats[0], stats[1], stats[0] + stats[1])

