"""GRPO passes with each prompt computed once per group (chexone/training/shared_prefix.py) against the reference: the
per-completion teacher-forcing batch (``build_policy_batch`` + ``token_logps``), which repeats each prompt G times.
Values and gradients must agree to float tolerance."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from chexone.data.collate import PromptCollator
from chexone.data.sample import Sample
from chexone.model.processor import PromptEncoder
from chexone.tasks.builtin import BUILTIN_TASKS
from chexone.training.core import token_logps
from chexone.training.rollout import build_policy_batch, shared_image_features
from chexone.training.shared_prefix import (
    attention_allowed,
    completions_per_row,
    plan_rows,
    shared_prefix_logps,
    supports_shared_prefix,
)

G = 3


def _prompts(tiny_processor):
    rng = np.random.default_rng(5)
    im = lambda h, w: Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8))  # noqa: E731
    samples = [
        Sample(id="a", task="close_vqa", question="Is there an effusion?", answer="A", options=["Yes", "No"],
               images=[im(112, 140)]),
        Sample(id="b", task="progression_generation", question="Compare the prior and the current study, please.",
               answer="Worse.", images=[im(84, 112), im(112, 84)]),
    ]
    enc = PromptEncoder(tiny_processor)
    return enc, PromptCollator(enc, lambda n: BUILTIN_TASKS[n](), reasoning="always")(samples)


def _completions(enc, P):
    """Right-padded completions of different lengths (one ends at its first token, one is truncated)."""
    g = torch.Generator().manual_seed(0)
    Lc = 7
    ids = torch.randint(10, 400, (P * G, Lc), generator=g)
    lengths = [7, 1, 4, 6, 2, 5][: P * G]
    mask = torch.zeros(P * G, Lc, dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
        if n < Lc:
            ids[r, n - 1] = enc.eos_token_id
            ids[r, n:] = enc.pad_token_id
    return ids, mask


def _model(tiny_dir, attn):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir, attn_implementation=attn).train()


def _reference(model, prompts, ids, mask, temperature):
    feats = shared_image_features(model, prompts)
    batch, predict = build_policy_batch(prompts, ids, mask, G, feats)
    lp, ent = token_logps(model, batch, predict, temperature, with_entropy=True)
    return lp[:, -ids.shape[1]:], ent[:, -ids.shape[1]:]


def test_plan_rows_by_hand():
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # left-padded: 2 and 3 tokens
    completion_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]])  # G = 2
    lay = plan_rows(prompt_mask, completion_mask, group=2, per_row=2)
    assert lay.rows == 2 and lay.width == 3 + 3 + 1
    assert lay.segment.tolist() == [[0, 0, 1, 1, 2, -1, -1], [0, 0, 0, 1, 1, 1, 2]]
    # flat source: prompt tokens 0..5 (P * Tp), then completion tokens 6 + c * 3 + t
    assert lay.source[:5].tolist() == [1, 2, 6, 7, 9]
    assert lay.source[7:].tolist() == [3, 4, 5, 12, 13, 14, 15]
    # the first token of each completion is predicted from the prompt's last slot, the others from the token before
    assert lay.predict_from.tolist() == [[1, 2, -1], [1, -1, -1], [9, 10, 11], [9, -1, -1]]
    one = plan_rows(prompt_mask, completion_mask, group=2, per_row=1)
    assert one.rows == 4 and one.segment[1].tolist()[:3] == [0, 0, 1]


def test_attention_mask_by_hand():
    allowed = attention_allowed(torch.tensor([[0, 0, 1, 1, 2, -1]]))[0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # the second completion sees the prompt and itself, not the first completion
        [1, 1, 0, 0, 0, 0],  # an empty slot sees the prompt only (never an empty row)
    ]


@pytest.mark.parametrize("attn,per_row,temperature", [("sdpa", 3, 1.0), ("sdpa", 2, 0.7), ("sdpa", 1, 1.0),
                                                      ("eager", 1, 1.0)])
def test_values_and_gradients_equal_the_per_completion_pass(tiny_dir, tiny_processor, attn, per_row, temperature):
    enc, prompts = _prompts(tiny_processor)
    ids, mask = _completions(enc, prompts["num_samples"])
    model = _model(tiny_dir, attn)
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))

    ref_lp, ref_ent = _reference(model, prompts, ids, mask, temperature)
    (ref_lp * weights).sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    feats = shared_image_features(model, prompts)
    lp, ent = shared_prefix_logps(model, prompts, ids, mask, G, feats, temperature, with_entropy=True,
                                  per_row=per_row)
    (lp * weights).sum().backward()
    assert torch.allclose(lp, ref_lp, atol=1e-5), (lp - ref_lp).abs().max()
    assert torch.allclose(ent, ref_ent, atol=1e-5)
    assert (lp[mask == 0] == 0).all() and (lp[mask == 1] < 0).all()
    names = dict(model.named_parameters())
    assert any(k.startswith("model.visual") for k in ref_grads)  # the vision tower is part of the comparison
    for k, g in ref_grads.items():
        assert torch.allclose(names[k].grad, g, rtol=1e-4, atol=1e-6), k


def test_encodes_pixels_itself_without_features(tiny_dir, tiny_processor):
    enc, prompts = _prompts(tiny_processor)
    ids, mask = _completions(enc, prompts["num_samples"])
    model = _model(tiny_dir, "sdpa").eval()
    with torch.no_grad():
        ref, _ = _reference(model, prompts, ids, mask, 1.0)
        got = shared_prefix_logps(model, prompts, ids, mask, G)
    assert torch.allclose(got, ref, atol=1e-5)


def test_completions_per_row_trades_prompt_copies_for_attention(tiny_model):
    # a long prompt and short completions: one row for the whole group (the prompt once)
    assert completions_per_row(tiny_model, prompt_length=600, completion_length=4, group=8) == 8
    # long completions next to a short prompt: the masked attention of a long row costs more than prompt copies
    assert completions_per_row(tiny_model, prompt_length=4, completion_length=4000, group=8) == 1


def test_supported_kernels(tiny_dir):
    assert supports_shared_prefix(_model(tiny_dir, "sdpa"))[0]
    model = _model(tiny_dir, "sdpa")
    model.config._attn_implementation = "flash_attention_2"  # only the name is read
    ok, why = supports_shared_prefix(model)
    assert not ok and "flash_attention_2" in why
