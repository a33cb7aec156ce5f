"""Rollout engines: shared-prefill == HF generate under greedy decoding; sampling log-probs == teacher forcing."""

from contextlib import contextmanager

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


# ------------------------------------------------------------------ the engine before its per-token work was fused


def reference_shared_prefill(model, enc, batch, settings, generator):
    """The shared-prefill loop as it was: HF's logits processors, ``torch.multinomial``, a full log-softmax for the
    sampled log-probs, every row decoded until all have stopped. Returns (tokens, logps) before masking."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from chexone.model import transformers_compat as compat

    s, G = settings, settings.num_generations
    procs = LogitsProcessorList()
    if s.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    if s.do_sample:
        if s.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(s.temperature))
        if s.top_k:
            procs.append(TopKLogitsWarper(s.top_k))
        if s.top_p < 1.0:
            procs.append(TopPLogitsWarper(s.top_p))
    ids, attn = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        features = shared_image_features(model, batch)
        positions, deltas = compat.rope_positions(model, ids, attn, batch["image_grid_thw"], batch["mm_token_type_ids"])
        logits, cache = compat.forward_with_cache(model, inputs_embeds=compat.embed_inputs(model, ids, features),
                                                  attention_mask=attn, position_ids=positions)
        compat.repeat_cache(cache, G)
        logits = logits[:, -1].float().repeat_interleave(G, dim=0)
        attn, deltas, seq = (x.repeat_interleave(G, dim=0) for x in (attn, deltas, ids))
        suppress = torch.tensor(enc.suppressed_token_ids())
        done = torch.zeros(seq.shape[0], dtype=torch.bool)
        tokens, logps = [], []
        for _ in range(s.max_new_tokens):
            raw = logits / s.temperature if s.do_sample else logits
            scores = logits.clone()
            scores[:, suppress] = float("-inf")
            scores = procs(seq, scores)
            if s.do_sample:
                nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
            else:
                nxt = scores.argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, enc.pad_token_id), nxt)
            logps.append(torch.log_softmax(raw, dim=-1).gather(1, nxt[:, None]).squeeze(1))
            tokens.append(nxt)
            done = done | (nxt == enc.eos_token_id)
            if bool(done.all()):
                break
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = (attn.sum(-1, keepdim=True) - 1 + deltas)[None].expand(3, -1, -1)
            logits, cache = compat.forward_with_cache(model, input_ids=nxt[:, None], attention_mask=attn,
                                                      position_ids=pos, cache=cache)
            logits = logits[:, -1].float()
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


@contextmanager
def raised_stop(model, enc, bias=2.0):
    """The tiny model with its <|im_end|> logit raised, so the rows stop at different steps (and get dropped)."""

    def raise_stop(module, args, out):
        out = out.clone()
        out[..., enc.eos_token_id] += bias
        return out

    handle = model.lm_head.register_forward_hook(raise_stop)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture()
def stopping_model(setup):
    with raised_stop(setup[0], setup[1]):
        yield setup


SETTINGS = {
    "paper": SamplingSettings(num_generations=4, max_new_tokens=30, temperature=0.9),
    "top_p_only": SamplingSettings(num_generations=4, max_new_tokens=30, top_k=0, top_p=0.8,
                                   repetition_penalty=1.3),
    "top_k_only": SamplingSettings(num_generations=4, max_new_tokens=30, top_k=5, top_p=1.0, temperature=1.5),
    "greedy": SamplingSettings(num_generations=2, max_new_tokens=30, do_sample=False),
}
STOP_BIAS = {"greedy": 1.8}


@pytest.mark.parametrize("check_every", [None, 4])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_tokens_and_logps_identical_to_the_reference_engine(setup, name, check_every):
    model, enc, batch = setup
    s = SETTINGS[name]
    ref_gen, gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    with raised_stop(model, enc, STOP_BIAS.get(name, 2.0)):
        ref_tokens, ref_logps = reference_shared_prefill(model, enc, batch, s, ref_gen)
        for _ in range(2):  # a second call continues from the generator state the first left (as GRPO steps do)
            roll = SharedPrefillEngine(gen, check_every=check_every).generate(model, enc, batch, s)
            lengths = roll.completion_mask.sum(1)
            assert lengths.min() < lengths.max()  # rows stopped at different steps
            assert torch.equal(roll.completion_ids, ref_tokens)  # same width, same tokens, pad after each stop
            assert torch.allclose(roll.sampling_logps, ref_logps * roll.completion_mask, atol=1e-5)
            assert torch.equal(gen.get_state(), ref_gen.get_state())  # draws after the last stop were rewound
            ref_tokens, ref_logps = reference_shared_prefill(model, enc, batch, s, ref_gen)


@pytest.mark.parametrize("static_cache", [True, False])
def test_finished_rows_leave_the_batch_and_streaming_still_sees_every_row(stopping_model, monkeypatch, static_cache):
    from chexone.model import transformers_compat as compat
    from chexone.model.static_decode import StaticDecoder

    model, enc, batch = stopping_model
    rows_per_forward, streamed = [], []
    original, original_step = compat.forward_with_cache, StaticDecoder.step

    def counting(model, **kwargs):
        rows_per_forward.append(kwargs["attention_mask"].shape[0])
        return original(model, **kwargs)

    def counting_step(self, tokens, t):
        rows_per_forward.append(tokens.shape[0])
        return original_step(self, tokens, t)

    monkeypatch.setattr(compat, "forward_with_cache", counting)
    monkeypatch.setattr(StaticDecoder, "step", counting_step)
    s = SETTINGS["paper"]
    roll = SharedPrefillEngine(torch.Generator().manual_seed(7), on_tokens=lambda t: streamed.append(t.clone()),
                               static_cache=static_cache).generate(model, enc, batch, s)
    lengths = roll.completion_mask.sum(1)
    # forward 0 is the prefill (2 prompts); decoding forward t runs the rows that had not stopped after step t
    assert rows_per_forward[0] == 2
    expected = [int((lengths > t + 1).sum()) for t in range(roll.completion_ids.shape[1] - 1)]
    assert rows_per_forward[1:] == expected and expected[-1] < 8
    # the streaming callback still gets one token per output row every step, pad for stopped rows
    assert all(t.shape == (8,) for t in streamed)
    assert torch.equal(torch.stack(streamed, dim=1), roll.completion_ids)


def test_no_log_softmax_sort_or_multinomial_per_token_unless_asked(setup):
    from torch.utils._python_dispatch import TorchDispatchMode

    model, enc, batch = setup
    vocab = model.lm_head.out_features

    class VocabOps(TorchDispatchMode):
        """Names of the ops run on [rows, vocab] tensors."""

        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 2 and args[0].shape[-1] == vocab:
                self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    results = {}
    for return_logps in (False, True):
        s = SamplingSettings(num_generations=2, max_new_tokens=6, return_logps=return_logps)
        with VocabOps() as ops:
            results[return_logps] = SharedPrefillEngine(torch.Generator().manual_seed(0)).generate(model, enc, batch, s)
        assert "topk" in ops.names and not ops.names & {"sort", "multinomial", "_log_softmax"}, ops.names
        assert ("logsumexp" in ops.names) == return_logps
    assert torch.equal(results[False].completion_ids, results[True].completion_ids)
    assert not results[False].sampling_logps.any() and results[True].sampling_logps.any()


def test_non_finite_scores_are_an_error(setup):
    model, enc, batch = setup
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out * float("nan"))
    try:
        with pytest.raises(RuntimeError, match="NaN"):
            SharedPrefillEngine(torch.Generator().manual_seed(0)).generate(
                model, enc, batch, SamplingSettings(num_generations=2, max_new_tokens=4))
    finally:
        handle.remove()


def test_cache_row_selection_keeps_the_chosen_rows(setup):
    # RELIES_ON: Cache.batch_select_indices(indices) (chexone.model.transformers_compat.select_cache_rows)
    from chexone.model import transformers_compat as compat

    model, enc, batch = setup
    ids, attn = batch["input_ids"], batch["attention_mask"]

    def forked_prefill():
        feats = shared_image_features(model, batch)
        positions, deltas = compat.rope_positions(model, ids, attn, batch["image_grid_thw"], batch["mm_token_type_ids"])
        _, cache = compat.forward_with_cache(model, inputs_embeds=compat.embed_inputs(model, ids, feats),
                                             attention_mask=attn, position_ids=positions)
        compat.repeat_cache(cache, 2)  # rows: prompt 0, prompt 0, prompt 1, prompt 1
        return cache, deltas.repeat_interleave(2, 0)

    with torch.no_grad():
        cache, deltas = forked_prefill()
        nxt = torch.tensor([5, 6, 7, 8])
        attn2 = torch.cat([attn.repeat_interleave(2, 0), torch.ones(4, 1, dtype=attn.dtype)], dim=1)
        pos = (attn2.sum(-1, keepdim=True) - 1 + deltas)[None].expand(3, -1, -1)
        every_row, _ = compat.forward_with_cache(model, input_ids=nxt[:, None], attention_mask=attn2,
                                                 position_ids=pos, cache=cache)
        cache, _ = forked_prefill()
        rows = torch.tensor([3, 0])  # reordered on purpose
        compat.select_cache_rows(cache, rows)
        picked, _ = compat.forward_with_cache(model, input_ids=nxt[rows, None], attention_mask=attn2[rows],
                                              position_ids=pos[:, rows], cache=cache)
    assert picked.shape[0] == 2
    assert torch.allclose(picked, every_row[rows], atol=1e-5)


def test_hf_generate_log_probs_come_from_teacher_forcing_not_stored_logits(setup, monkeypatch):
    model, enc, batch = setup
    asked = {}
    original = model.generate

    def recording(**kwargs):
        asked.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", recording)
    s = SamplingSettings(num_generations=2, max_new_tokens=8, temperature=0.8)
    roll = HFGenerateEngine().generate(model, enc, batch, s)
    assert not asked.get("output_logits") and not asked.get("output_scores")
    # reference: the full log-softmax over the vocabulary of each completion token, from one uncached forward per row
    with torch.no_grad():
        policy, predict = build_policy_batch(batch, roll.completion_ids, roll.completion_mask, 2, None)
        logits = model(input_ids=policy["input_ids"], attention_mask=policy["attention_mask"],
                       pixel_values=policy["pixel_values"], image_grid_thw=policy["image_grid_thw"],
                       mm_token_type_ids=policy["mm_token_type_ids"]).logits.float()
    width = roll.completion_ids.shape[1]
    expected = torch.log_softmax(logits[:, -width - 1 : -1] / 0.8, dim=-1).gather(2, roll.completion_ids[..., None])
    assert torch.allclose(roll.sampling_logps, expected.squeeze(2) * roll.completion_mask, atol=1e-4)
    assert roll.sampling_logps[roll.completion_mask.bool()].lt(0).all()
