"""Choosing the next token from a [rows, vocab] score tensor: Hugging Face's repetition penalty, temperature, top-k and
top-p in one pass, and a sampler that needs no host sync.

Why not HF's logits processors in the decoding loop: ``TopPLogitsWarper`` sorts the whole vocabulary every step (151,936
entries per row for Qwen) and ``torch.multinomial`` checks its input with host syncs. Here top-p works on the top-k
candidates only, and sampling is the exponential race ``argmax(p / E)``, ``E ~ Exp(1)``, which is exactly what
``torch.multinomial(p, 1)`` computes: with the same generator both pick the same tokens.

The filtered scores equal HF's (``tests/test_sampling.py`` compares them on random inputs). Where several tokens tie
on the top-p boundary, HF removes as many of them as its cumulative sum says, picking which by the order its (unstable)
sort leaves them in; here the same number is removed, lowest token ids first, which is what HF does with a stable
sort. Either way the kept probability mass is the same.
"""

from __future__ import annotations

import torch


def apply_repetition_penalty_(scores: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """``RepetitionPenaltyLogitsProcessor`` in place: every token id in ``seen_ids`` [rows, L] (prompt included, as
    ``generate`` does) has its score divided by ``penalty`` (multiplied where negative), once however often it
    occurs."""
    seen = scores.gather(1, seen_ids)
    return scores.scatter_(1, seen_ids, torch.where(seen < 0, seen * penalty, seen / penalty))


def top_k_top_p_(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """``TopKLogitsWarper`` then ``TopPLogitsWarper`` in place: removed tokens get -inf.

    Top-k keeps every score >= the k-th largest (ties included). Top-p then removes tokens from the least likely up
    while the cumulative probability over the kept tokens stays <= ``1 - top_p``, always keeping the most likely
    one. Everything is computed from the k candidates ``topk`` returns (all tokens without top-k), plus the count of
    tokens tied with the k-th score that it left out. Among equal scores the lowest token ids are removed first.
    """
    vocab = scores.shape[-1]
    use_k = 0 < top_k < vocab
    if not use_k and top_p >= 1.0:
        return scores
    if use_k:
        values = scores.topk(top_k, dim=-1).values  # descending
        kth = values[:, -1:]
        if top_p >= 1.0:
            return scores.masked_fill_(scores < kth, float("-inf"))
        tied_out = (scores >= kth).sum(-1, keepdim=True) - top_k  # tied with the k-th score, not among the k
    else:
        values = scores.sort(dim=-1, descending=True).values
        kth = values[:, -1:]
        tied_out = torch.zeros_like(kth, dtype=torch.long)
    n = values.shape[-1]
    weights = (values - values[:, :1]).exp()
    tied_weight = tied_out * (kth - values[:, :1]).exp()
    total = weights.sum(-1, keepdim=True) + tied_weight
    probs = weights / total
    limit = 1 - top_p
    # ascending cumulative probability: the left-out ties (lowest score) first, then the candidates
    cumulative = tied_weight / total + probs.flip(-1).cumsum(-1)
    removed = (cumulative <= limit).sum(-1, keepdim=True).clamp(max=n - 1)  # a prefix; the most likely stays
    removed_tied_out = torch.where(removed > 0, tied_out,
                                   torch.minimum((limit / probs[:, -1:]).floor().nan_to_num(0), tied_out).long())
    cut = values.gather(1, n - 1 - removed)  # the lowest kept score
    # how many tokens scoring exactly `cut` are removed (the boundary can split a group of equal scores)
    kept_at_cut = (n - removed) - (values > cut).sum(-1, keepdim=True)
    split = (values == cut).sum(-1, keepdim=True) - kept_at_cut + torch.where(cut == kth, removed_tied_out, 0)
    at_cut = scores == cut
    remove = (scores < cut) | (at_cut & (at_cut.cumsum(-1) <= split))
    return scores.masked_fill_(remove, float("-inf"))


def filter_scores(logits: torch.Tensor, seen_ids: torch.Tensor, suppress: torch.Tensor, *, do_sample: bool,
                  temperature: float, top_k: int, top_p: float, repetition_penalty: float) -> torch.Tensor:
    """New [rows, vocab] scores of HF's processor chain (suppressed tokens -inf, then repetition penalty, then, when
    sampling, temperature, top-k and top-p: removed tokens -inf). ``logits`` is left untouched."""
    scores = logits.index_fill(1, suppress, float("-inf")) if suppress.numel() else logits.clone()
    if repetition_penalty and repetition_penalty != 1.0:
        apply_repetition_penalty_(scores, seen_ids, repetition_penalty)
    if do_sample:
        if temperature != 1.0:
            scores.div_(temperature)
        top_k_top_p_(scores, top_k or 0, top_p)
    return scores


def exponential_race(scores: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(one token per row sampled from ``softmax(scores)``, True where the row's probabilities were not finite).

    ``noise`` holds Exp(1) draws of the same shape (``torch.empty_like(probs).exponential_(generator=g)``); the
    arithmetic is ``torch.multinomial``'s own for one sample, so the tokens match it draw for draw. The flag replaces
    multinomial's checks, which cost a host sync every step.
    """
    ratio = scores.softmax(dim=-1).div_(noise)
    tokens = ratio.argmax(dim=-1)
    return tokens, ratio.gather(1, tokens[:, None]).squeeze(1).isnan()


def greedy(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the highest-scoring token per row, True where the row holds a NaN)."""
    tokens = scores.argmax(dim=-1)
    return tokens, scores.gather(1, tokens[:, None]).squeeze(1).isnan()


__all__ = ["apply_repetition_penalty_", "exponential_race", "filter_scores", "greedy", "top_k_top_p_"]
