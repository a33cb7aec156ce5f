"""What chexone relies on in transformers' Qwen2.5-VL (chexone/model/transformers_compat.py, RELIES_ON), checked
against the installed release: each test names the piece it checks, so an upstream change fails here first.

The reference for our multimodal glue is transformers' own path: ``model(input_ids, pixel_values, image_grid_thw,
mm_token_type_ids)`` must give the same logits as our image features + ``inputs_embeds`` + explicit positions."""

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from chexone.data.collate import PromptCollator
from chexone.data.sample import Sample
from chexone.model import transformers_compat as compat
from chexone.model.processor import PromptEncoder
from chexone.tasks.builtin import BUILTIN_TASKS


@pytest.fixture()
def setup(tiny_model, tiny_processor):
    rng = np.random.default_rng(1)
    im = lambda: Image.fromarray(rng.integers(0, 255, (112, 140), dtype=np.uint8))  # noqa: E731
    samples = [
        Sample(id="a", task="close_vqa", question="Is there an effusion?", answer="A", options=["Yes", "No"],
               images=[im()]),
        Sample(id="b", task="progression_generation", question="Compare the prior and the current study, please.",
               answer="Worse.", images=[im(), im()]),
    ]
    enc = PromptEncoder(tiny_processor)
    batch = PromptCollator(enc, lambda n: BUILTIN_TASKS[n](), reasoning="always")(samples)
    return tiny_model.eval(), batch


def test_model_has_inner_model_with_visual_and_language_model(tiny_model):
    # RELIES_ON: Qwen2_5_VLForConditionalGeneration.model with .visual, .language_model; config.image_token_id
    assert hasattr(tiny_model, "model") and hasattr(tiny_model.model, "visual")
    assert hasattr(tiny_model.model, "language_model") and hasattr(tiny_model, "lm_head")
    assert isinstance(tiny_model.config.image_token_id, int)
    assert tiny_model.get_input_embeddings() is tiny_model.model.language_model.embed_tokens


def test_get_image_features_gives_one_tensor_per_image(setup):
    # RELIES_ON: Qwen2_5_VLModel.get_image_features(pixel_values, image_grid_thw) -> per-image features
    model, batch = setup
    with torch.no_grad():
        feats = compat.image_features(model, batch["pixel_values"], batch["image_grid_thw"])
    merge = model.model.visual.spatial_merge_size ** 2
    assert [f.shape[0] for f in feats] == (batch["image_grid_thw"].prod(-1) // merge).tolist()
    assert all(f.shape[1] == model.config.text_config.hidden_size for f in feats)


def test_get_rope_index_signature_and_shapes(setup):
    # RELIES_ON: Qwen2_5_VLModel.get_rope_index(input_ids, mm_token_type_ids=, image_grid_thw=, attention_mask=)
    model, batch = setup
    params = inspect.signature(model.model.get_rope_index).parameters
    assert {"input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask"} <= set(params)
    positions, deltas = compat.rope_positions(model, batch["input_ids"], batch["attention_mask"],
                                              batch["image_grid_thw"], batch["mm_token_type_ids"])
    B, T = batch["input_ids"].shape
    assert positions.shape == (3, B, T) and deltas.shape == (B, 1)
    # text positions after the last image token: one apart, and the delta continues them during decoding
    last = positions[0, :, -1]
    assert torch.equal(last + 1, batch["attention_mask"].sum(-1) + deltas.view(-1))


def test_text_positions_skip_left_padding():
    attn = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = compat.text_positions(attn)
    assert pos.shape == (3, 2, 5)
    assert pos[0, 0, 2:].tolist() == [0, 1, 2] and pos[0, 1].tolist() == [0, 1, 2, 3, 4]


def test_inputs_embeds_path_matches_the_models_own_multimodal_forward(setup):
    # RELIES_ON: Qwen2_5_VLModel.forward(inputs_embeds=, attention_mask=, position_ids=) -> last_hidden_state
    model, batch = setup
    with torch.no_grad():
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                          mm_token_type_ids=batch["mm_token_type_ids"], use_cache=False).logits
        feats = compat.image_features(model, batch["pixel_values"], batch["image_grid_thw"])
        embeds = compat.embed_inputs(model, batch["input_ids"], feats)
        positions, _ = compat.rope_positions(model, batch["input_ids"], batch["attention_mask"],
                                             batch["image_grid_thw"], batch["mm_token_type_ids"])
        hidden = compat.decoder_hidden_states(model, embeds, batch["attention_mask"], positions)
        ours = model.lm_head(hidden)
    keep = batch["attention_mask"].bool()
    assert torch.allclose(ours[keep], reference[keep], atol=1e-5)


def test_embed_inputs_refuses_mismatched_features(setup):
    model, batch = setup
    with torch.no_grad():
        feats = compat.image_features(model, batch["pixel_values"], batch["image_grid_thw"])
    with pytest.raises(ValueError, match="image tokens"):
        compat.embed_inputs(model, batch["input_ids"], feats[:-1])


def test_cache_argument_name_and_cached_decoding_equals_full_forward(setup):
    # RELIES_ON: forward(..., cache= | past_key_values=, logits_to_keep=) -> logits + cache; Cache.batch_repeat_interleave
    model, batch = setup
    name = compat.cache_argument(type(model))
    assert name in inspect.signature(type(model).forward).parameters
    ids, attn = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        feats = compat.image_features(model, batch["pixel_values"], batch["image_grid_thw"])
        positions, deltas = compat.rope_positions(model, ids, attn, batch["image_grid_thw"], batch["mm_token_type_ids"])
        logits, cache = compat.forward_with_cache(model, inputs_embeds=compat.embed_inputs(model, ids, feats),
                                                  attention_mask=attn, position_ids=positions)
        assert hasattr(cache, "batch_repeat_interleave")
        compat.repeat_cache(cache, 2)
        nxt = logits[:, -1].argmax(-1).repeat_interleave(2)
        attn2 = torch.cat([attn.repeat_interleave(2, 0), torch.ones(len(nxt), 1, dtype=attn.dtype)], dim=1)
        pos = (attn2.sum(-1, keepdim=True) - 1 + deltas.repeat_interleave(2, 0))[None].expand(3, -1, -1)
        step, _ = compat.forward_with_cache(model, input_ids=nxt[:, None], attention_mask=attn2, position_ids=pos,
                                            cache=cache)
        # reference: the whole sequence (prompt + that token) in one uncached forward through the model's own path
        full = model(input_ids=torch.cat([ids, nxt[::2, None]], dim=1),
                     attention_mask=torch.cat([attn, torch.ones(len(ids), 1, dtype=attn.dtype)], dim=1),
                     pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                     mm_token_type_ids=torch.cat([batch["mm_token_type_ids"],
                                                  torch.zeros(len(ids), 1, dtype=batch["mm_token_type_ids"].dtype)],
                                                 dim=1),
                     use_cache=False).logits[:, -1]
    assert torch.allclose(step[::2, -1], full, atol=1e-4) and torch.allclose(step[1::2, -1], full, atol=1e-4)


def test_vision_tower_states_then_merger_equal_image_features(setup):
    # RELIES_ON: visual(...) -> last_hidden_state before .merger, pooler_output = .merger(...) rows reordered
    model, batch = setup
    model.train()
    ref = compat.image_features(model, batch["pixel_values"], batch["image_grid_thw"])
    states, order = compat.vision_tower_states(model, batch["pixel_values"], batch["image_grid_thw"])
    assert not states.requires_grad and sorted(order.tolist()) == list(range(order.numel()))
    got = compat.merge_vision_states(model, states, order, batch["image_grid_thw"])
    assert [g.shape for g in got] == [r.shape for r in ref]
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, atol=1e-6)
    # gradients reach the merger through the re-merged features exactly as through the full tower
    sum(r.sum() for r in ref).backward()
    want = {k: p.grad.clone() for k, p in model.model.visual.merger.named_parameters()}
    model.zero_grad()
    sum(g.sum() for g in got).backward()
    for k, p in model.model.visual.merger.named_parameters():
        assert torch.allclose(p.grad, want[k], atol=1e-5), k


def test_packed_positions_keep_sequences_apart(tiny_model):
    # RELIES_ON: position_ids [4, B, T] (text first) with attention_mask=None = packed sequences
    model = tiny_model.eval()
    torch.manual_seed(0)
    a, b = torch.randint(20, 300, (1, 5)), torch.randint(20, 300, (1, 3))
    embed = model.get_input_embeddings()
    with torch.no_grad():
        alone = [compat.decoder_hidden_states(model, embed(x), torch.ones_like(x), compat.text_positions(
            torch.ones_like(x))) for x in (a, b)]
        text = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
        packed = compat.packed_hidden_states(model, embed(torch.cat([a, b], 1)), text[None].expand(3, -1, -1), text)
    assert torch.allclose(packed[:, :5], alone[0], atol=1e-5)
    assert torch.allclose(packed[:, 5:], alone[1], atol=1e-5)  # b does not see a


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_a_custom_4d_mask_is_used_as_given(tiny_dir, kernel):
    # RELIES_ON: a 4D attention mask passes through unchanged (sdpa: bool, eager: additive float)
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, attn_implementation=kernel).eval()
    assert compat.attention_kernel(model) == kernel
    torch.manual_seed(0)
    x = torch.randint(20, 300, (1, 6))
    embeds = model.get_input_embeddings()(x)
    pos = compat.text_positions(torch.ones_like(x))
    # token 5 may see only tokens 0, 1 and itself: the same as a sequence of those three tokens
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    allowed[5, 2:5] = False
    with torch.no_grad():
        got = compat.masked_hidden_states(model, embeds, allowed[None], pos)
        short = torch.cat([x[:, :2], x[:, 5:]], 1)
        pos_short = torch.tensor([[0, 1, 5]])[None].expand(3, -1, -1)
        ref = compat.decoder_hidden_states(model, model.get_input_embeddings()(short), torch.ones_like(short),
                                           pos_short)
    assert torch.allclose(got[:, 5], ref[:, 2], atol=1e-5)
    assert torch.allclose(got[:, :5], compat.decoder_hidden_states(model, embeds[:, :5], torch.ones_like(x[:, :5]),
                                                                   pos[:, :, :5]), atol=1e-5)


def test_text_decoder_parts_and_cache_tensors(setup):
    # RELIES_ON: Qwen2_5_VLModel.language_model: .embed_tokens, .rotary_emb, .norm, .layers[i] (norms, projections,
    # mlp), lm_head; Cache.layers[i].keys / .values (chexone.model.static_decode decodes from them)
    model, batch = setup
    parts = compat.decoder_parts(model)
    cfg = model.config.text_config
    assert len(parts.layers) == cfg.num_hidden_layers and parts.sliding_window is None
    assert parts.num_heads * parts.head_dim == cfg.hidden_size
    layer = parts.layers[0]
    assert layer.q_proj.bias is not None and layer.o_proj.bias is None
    assert layer.k_proj.out_features == parts.num_kv_heads * parts.head_dim
    x = torch.randn(2, 1, cfg.hidden_size)
    cos, sin = parts.rotary_emb(x, torch.zeros(3, 2, 1, dtype=torch.long))
    assert cos.shape == sin.shape == (2, 1, parts.head_dim) and torch.allclose(cos, torch.ones_like(cos))
    ids, attn = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        _, cache = compat.forward_with_cache(model, input_ids=ids, attention_mask=attn,
                                             position_ids=compat.text_positions(attn))
    kv = compat.cache_key_values(cache)
    assert len(kv) == cfg.num_hidden_layers
    assert kv[0][0].shape == kv[0][1].shape == (ids.shape[0], parts.num_kv_heads, ids.shape[1], parts.head_dim)


SAVE_ON_RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from transformers import BertConfig, BertModel
from chexone.model.transformers_compat import save_local_model

out, rank = sys.argv[1], int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
BertModel(cfg).save_pretrained(f"{out}/plain{rank}")
save_local_model(BertModel(cfg), f"{out}/local{rank}")
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_save_local_model_writes_on_every_rank(tmp_path):
    # RELIES_ON: PreTrainedModel.save_pretrained asks should_save_on_this_rank (compat.save_local_model)
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "save.py"
    script.write_text(SAVE_ON_RANK_SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    for p in procs:
        out, _ = p.communicate(timeout=100)
        assert p.returncode == 0, out[-3000:]
    saved = lambda d: (d / "config.json").is_file() and (d / "model.safetensors").is_file()  # noqa: E731
    # transformers' own rule for a shared checkpoint: only rank 0 writes (why save_local_model exists) ...
    assert saved(tmp_path / "plain0") and not saved(tmp_path / "plain1")
    # ... and a file a process builds for itself is written on every rank
    assert saved(tmp_path / "local0") and saved(tmp_path / "local1")


def test_save_local_model_names_a_save_that_wrote_nothing(tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=8))
    monkeypatch.setattr(type(model), "save_pretrained", lambda self, d, **kw: None)
    with pytest.raises(compat.ModelAPIError, match="wrote no config.json, model.safetensors"):
        compat.save_local_model(model, tmp_path / "m")
    assert "should_save_on_this_rank" not in vars(model)  # the class's own method is back
