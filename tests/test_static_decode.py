"""chexone.model.static_decode: decoding steps with a preallocated KV cache and the decoder's arithmetic written out
give the logits of the model's own forward with its growing cache (the reference), row drops included."""

import pytest
import torch
from torch import nn

from chexone.data.collate import PromptCollator
from chexone.model import transformers_compat as compat
from chexone.model.processor import PromptEncoder
from chexone.model.static_decode import StaticDecoder, static_decoder_problem
from chexone.tasks.builtin import BUILTIN_TASKS
from chexone.training.rollout import SamplingSettings, SharedPrefillEngine, shared_image_features
from test_rollout import samples


@pytest.fixture()
def setup(tiny_model, tiny_processor):
    enc = PromptEncoder(tiny_processor)
    batch = PromptCollator(enc, lambda n: BUILTIN_TASKS[n](), reasoning="always")(samples())
    assert (batch["attention_mask"] == 0).any()  # prompts of different lengths: padding is exercised
    return tiny_model.eval(), enc, batch


def _prefill(model, batch):
    ids, attn = batch["input_ids"], batch["attention_mask"]
    positions, deltas = compat.rope_positions(model, ids, attn, batch.get("image_grid_thw"),
                                              batch.get("mm_token_type_ids"))
    embeds = compat.embed_inputs(model, ids, shared_image_features(model, batch))
    logits, cache = compat.forward_with_cache(model, inputs_embeds=embeds, attention_mask=attn, position_ids=positions)
    return logits, cache, attn.sum(-1, keepdim=True) + deltas


@torch.no_grad()
def test_steps_match_the_models_forward_with_its_cache_including_dropped_rows(setup):
    model, _, batch = setup
    G, steps, attn = 3, 6, batch["attention_mask"]
    _, cache, first = _prefill(model, batch)
    static = StaticDecoder(model, cache, attn, first, G, max_new_tokens=steps)
    _, ref_cache, _ = _prefill(model, batch)
    compat.repeat_cache(ref_cache, G)
    rows, prompt_len = attn.shape[0] * G, attn.shape[1]
    mask = torch.ones((rows, prompt_len + steps), dtype=attn.dtype)
    mask[:, :prompt_len] = attn.repeat_interleave(G, dim=0)
    position = first.repeat_interleave(G, dim=0)
    gen = torch.Generator().manual_seed(0)
    for t in range(steps):
        tokens = torch.randint(10, 200, (static.rows,), generator=gen)
        ref, ref_cache = compat.forward_with_cache(model, input_ids=tokens[:, None],
                                                   attention_mask=mask[:, : prompt_len + t + 1],
                                                   position_ids=(position + t)[None].expand(3, -1, -1),
                                                   cache=ref_cache)
        got = static.step(tokens, t)
        assert got.dtype == torch.float32 and got.shape == ref[:, -1].shape
        torch.testing.assert_close(got, ref[:, -1].float(), atol=2e-5, rtol=1e-5)
        if t == 2:  # rows finish: both drop them (different rows of different prompts)
            keep = torch.tensor([0, 2, 3, 5])
            static.select_rows(keep)
            compat.select_cache_rows(ref_cache, keep)
            mask, position = mask[keep], position[keep]


@torch.no_grad()
def test_engine_tokens_and_logps_equal_with_and_without_the_static_cache(setup):
    model, enc, batch = setup
    for settings in (SamplingSettings(num_generations=1, max_new_tokens=16, do_sample=False, repetition_penalty=1.1),
                     SamplingSettings(num_generations=4, max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50)):
        fast = SharedPrefillEngine(torch.Generator().manual_seed(3)).generate(model, enc, batch, settings)
        slow = SharedPrefillEngine(torch.Generator().manual_seed(3), static_cache=False).generate(
            model, enc, batch, settings)
        assert torch.equal(fast.completion_ids, slow.completion_ids)
        assert torch.equal(fast.completion_mask, slow.completion_mask)
        torch.testing.assert_close(fast.sampling_logps, slow.sampling_logps, atol=1e-5, rtol=1e-5)


class WrappedLinear(nn.Linear):
    """A stand-in for an adapter-wrapped projection: the static decoder cannot know what it adds."""

    def forward(self, x):
        return super().forward(x) * 1.0


def test_unsupported_models_are_named_and_decode_through_the_models_forward(setup, monkeypatch):
    model, enc, batch = setup
    assert static_decoder_problem(model) is None
    attn = model.model.language_model.layers[1].self_attn
    old = attn.q_proj
    wrapped = WrappedLinear(old.in_features, old.out_features, bias=True)
    wrapped.load_state_dict(old.state_dict())
    monkeypatch.setattr(attn, "q_proj", wrapped)
    assert "layers[1].q_proj is a WrappedLinear" in static_decoder_problem(model)
    built = []
    monkeypatch.setattr(StaticDecoder, "__init__", lambda self, *a, **k: built.append(1))
    roll = SharedPrefillEngine().generate(model, enc, batch, SamplingSettings(num_generations=1, max_new_tokens=4,
                                                                              do_sample=False))
    assert not built and roll.completion_ids.shape[0] == 2


@torch.no_grad()
def test_bf16_autocast_steps_stay_close_to_the_models_forward(setup):
    """Under bf16 mixed precision (how GPU runs generate) the buffers keep the prefill cache's dtype and the logits
    stay within bf16 rounding of the model's forward."""
    model, _, batch = setup
    attn = batch["attention_mask"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, cache, first = _prefill(model, batch)
        keys, values = compat.cache_key_values(cache)[0]
        static = StaticDecoder(model, cache, attn, first, 2, max_new_tokens=3)
        assert (static.keys[0].dtype, static.values[0].dtype) == (keys.dtype, values.dtype)  # roped keys are fp32
        _, ref_cache, _ = _prefill(model, batch)
        compat.repeat_cache(ref_cache, 2)
        mask = torch.ones((4, attn.shape[1] + 3), dtype=attn.dtype)
        mask[:, : attn.shape[1]] = attn.repeat_interleave(2, dim=0)
        tokens = torch.tensor([11, 12, 13, 14])
        for t in range(3):
            ref, ref_cache = compat.forward_with_cache(model, input_ids=tokens[:, None],
                                                       attention_mask=mask[:, : attn.shape[1] + t + 1],
                                                       position_ids=(first.repeat_interleave(2, dim=0) + t)[None]
                                                       .expand(3, -1, -1), cache=ref_cache)
            torch.testing.assert_close(static.step(tokens, t), ref[:, -1].float(), atol=5e-2, rtol=2e-2)
