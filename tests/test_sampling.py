"""The fused next-token filter and sampler (chexone/training/sampling.py) against Hugging Face's logits processors and
torch.multinomial, on random scores and on scores full of ties."""

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from chexone.training.sampling import exponential_race, filter_scores, greedy, top_k_top_p_

INF = float("inf")


def hf_chain(logits, seen, suppress, *, temperature, top_k, top_p, repetition_penalty):
    """The processors in the order generate (and the shared-prefill engine before) applies them."""
    procs = LogitsProcessorList()
    if repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    scores = logits.clone()
    scores[:, suppress] = -INF
    return procs(seen, scores)


CASES = [  # (temperature, top_k, top_p, repetition_penalty)
    (1.0, 50, 0.9, 1.1),  # the paper's stage-2 settings
    (0.7, 50, 0.9, 1.1),
    (1.0, 0, 0.8, 1.3),  # top-p over the whole vocabulary
    (1.3, 7, 1.0, 1.0),  # top-k only
    (1.0, 1, 0.9, 1.0),
    (1.0, 299, 0.5, 1.0),  # k = vocab - 1
    (1.0, 300, 0.5, 1.0),  # k = vocab: no top-k
    (1.0, 500, 0.99, 1.0),  # k > vocab
    (1.0, 50, 0.0, 1.0),  # top_p = 0: only the most likely token
    (1.0, 0, 1.0, 1.2),  # repetition penalty only
]


@pytest.mark.parametrize("temperature,top_k,top_p,penalty", CASES)
def test_filtered_distribution_equals_hf_processors_on_random_scores(temperature, top_k, top_p, penalty):
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        logits = torch.randn(6, 300, generator=g) * (0.5 + 4 * trial / 20)
        seen = torch.randint(0, 300, (6, 25), generator=g)
        suppress = torch.tensor([3, 7])
        expected = hf_chain(logits, seen, suppress, temperature=temperature, top_k=top_k, top_p=top_p,
                            repetition_penalty=penalty)
        before = logits.clone()
        got = filter_scores(logits, seen, suppress, do_sample=True, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=penalty)
        assert torch.equal(logits, before)  # the model's logits are left as they were
        assert torch.equal(got, expected)  # the same scores, -inf at the same tokens ...
        assert torch.equal(got.softmax(-1), expected.softmax(-1))  # ... so the same probability vectors
        assert torch.isinf(got[:, suppress]).all()


def test_greedy_filter_applies_only_suppression_and_the_repetition_penalty():
    g = torch.Generator().manual_seed(1)
    logits, seen = torch.randn(4, 100, generator=g), torch.randint(0, 100, (4, 9), generator=g)
    expected = logits.clone()
    expected[:, [5]] = -INF
    expected = RepetitionPenaltyLogitsProcessor(1.1)(seen, expected)
    got = filter_scores(logits, seen, torch.tensor([5]), do_sample=False, temperature=0.5, top_k=3, top_p=0.5,
                        repetition_penalty=1.1)
    assert torch.equal(got, expected)


def stable_top_p(scores, top_p):
    """``TopPLogitsWarper``'s code with a stable sort: among equal scores the lower token id comes first."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False, stable=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = 0
    return scores.masked_fill(remove.scatter(1, sorted_indices, remove), -INF)


@pytest.mark.parametrize("top_k", [0, 1, 5, 50, 299])
@pytest.mark.parametrize("top_p", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_ties_keep_as_many_tokens_as_hf_lowest_ids_removed_first(top_k, top_p):
    # rounded scores: many equal values, at the k-th score and on the top-p boundary (as bf16 logits have)
    g = torch.Generator().manual_seed(2)
    for spread in (0.3, 1.0, 2.0, 4.0):
        scores = (torch.randn(6, 300, generator=g) * spread).round()
        topk = TopKLogitsWarper(top_k)(None, scores.clone()) if top_k else scores.clone()
        reference = stable_top_p(topk, top_p)
        hf = TopPLogitsWarper(top_p)(None, topk)
        got = top_k_top_p_(scores.clone(), top_k, top_p)
        assert torch.equal(got, reference)
        # HF's own warper (unstable sort) keeps the same number of tokens, hence the same probability mass
        assert torch.equal(got.isfinite().sum(-1), hf.isfinite().sum(-1))


def test_exponential_race_is_torch_multinomial_draw_for_draw():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(16, 1000, generator=g) * 3
    scores[:, 500:] = -INF  # filtered tokens
    ours, theirs = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(20):
        expected = torch.multinomial(scores.softmax(-1), 1, generator=theirs).squeeze(1)
        tokens, invalid = exponential_race(scores, torch.empty_like(scores).exponential_(generator=ours))
        assert torch.equal(tokens, expected) and not invalid.any()
        assert (tokens < 500).all()


def test_non_finite_rows_are_flagged():
    scores = torch.randn(3, 10)
    scores[1, 4] = float("nan")
    scores[2] = -INF  # nothing left to sample
    _, invalid = exponential_race(scores, torch.ones_like(scores))
    assert invalid.tolist() == [False, True, True]
    _, invalid = greedy(scores)
    assert invalid.tolist() == [False, True, False]
