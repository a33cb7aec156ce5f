"""Rollout engines: shared-prefill == HF generate under greedy decoding; sampling log-probs == teacher forcing."""

import numpy as np
import pytest
import torch
from PIL import Image

from chexone.data.collate import PromptCollator
from chexone.data.sample import Sample
from chexone.model.processor import PromptEncoder
from chexone.tasks.builtin import BUILTIN_TASKS
from chexone.training.core import token_logps
from chexone.training.rollout import (
    HFGenerateEngine,
    SamplingSettings,
    SharedPrefillEngine,
    build_policy_batch,
    shared_image_features,
)


def samples():
    rng = np.random.default_rng(0)
    im = lambda: Image.fromarray(rng.integers(0, 255, (112, 112), dtype=np.uint8))  # noqa: E731
    return [
        Sample(id="a", task="close_vqa", question="Is there an effusion?", answer="A", options=["Yes", "No"],
               images=[im()]),
        Sample(id="b", task="progression_generation", question="Compare the prior and the current study, please.",
               answer="Worse.", images=[im(), im()]),
    ]


@pytest.fixture()
def setup(tiny_model, tiny_processor):
    enc = PromptEncoder(tiny_processor)
    batch = PromptCollator(enc, lambda n: BUILTIN_TASKS[n](), reasoning="always")(samples())
    return tiny_model.eval(), enc, batch


@pytest.mark.parametrize("settings", [
    SamplingSettings(num_generations=1, max_new_tokens=12, do_sample=False, repetition_penalty=1.1),
    # top_k=1 sampling is deterministic, so G > 1 can be compared too
    SamplingSettings(num_generations=2, max_new_tokens=12, do_sample=True, top_k=1, top_p=1.0,
                     repetition_penalty=1.1),
])
def test_shared_prefill_matches_hf_generate_deterministic(setup, settings):
    model, enc, batch = setup
    s = settings
    a = SharedPrefillEngine().generate(model, enc, batch, s)
    b = HFGenerateEngine().generate(model, enc, batch, s)
    width = min(a.completion_ids.shape[1], b.completion_ids.shape[1])
    assert torch.equal(a.completion_ids[:, :width], b.completion_ids[:, :width])
    assert torch.equal(a.completion_mask[:, :width], b.completion_mask[:, :width])
    assert torch.allclose(a.sampling_logps[:, :width], b.sampling_logps[:, :width], atol=1e-4)
    assert a.texts == b.texts
    vision = set(enc.suppressed_token_ids())
    assert not vision & set(a.completion_ids.flatten().tolist())


@pytest.mark.parametrize("shared", [True, False])
def test_teacher_forced_logps_match_sampling_logps(setup, shared):
    model, enc, batch = setup
    s = SamplingSettings(num_generations=3, max_new_tokens=16, temperature=0.9, top_p=0.9, top_k=50)
    gen = torch.Generator().manual_seed(0)
    roll = SharedPrefillEngine(gen).generate(model, enc, batch, s)
    assert roll.completion_ids.shape[0] == 2 * 3
    with torch.no_grad():
        feats = shared_image_features(model, batch) if shared else None
        policy, predict = build_policy_batch(batch, roll.completion_ids, roll.completion_mask, 3, feats)
        lp = token_logps(model, policy, predict, temperature=0.9)
    width = roll.completion_ids.shape[1]
    got = lp[:, -width:] * roll.completion_mask
    assert torch.allclose(got, roll.sampling_logps * roll.completion_mask, atol=1e-4)


def test_image_features_are_computed_once_per_prompt(setup, monkeypatch):
    model, enc, batch = setup
    calls = []
    original = model.model.visual.forward

    def counting(*args, **kwargs):
        calls.append(kwargs.get("grid_thw", args[1] if len(args) > 1 else None).shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model.model.visual, "forward", counting)
    s = SamplingSettings(num_generations=4, max_new_tokens=4)
    roll = SharedPrefillEngine(torch.Generator().manual_seed(0)).generate(model, enc, batch, s)
    assert calls == [3]  # one vision pass over the 3 images of the 2 prompts, not 3 x 4
    # Teacher forcing over the 2 x 4 sequences: shared features encode 3 images, the naive batch 3 x 4.
    calls.clear()
    with torch.no_grad():
        feats = shared_image_features(model, batch)
        shared, predict = build_policy_batch(batch, roll.completion_ids, roll.completion_mask, 4, feats)
        a = token_logps(model, shared, predict)
    assert calls == [3]
    calls.clear()
    with torch.no_grad():
        naive, predict2 = build_policy_batch(batch, roll.completion_ids, roll.completion_mask, 4, None)
        b = token_logps(model, naive, predict2)
    assert calls == [12]
    assert torch.allclose(a, b, atol=1e-5)  # same numbers either way
