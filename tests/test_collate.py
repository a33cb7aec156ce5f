"""Collators: the SFT label mask, token by token; image placeholders; left-padded prompts."""

import numpy as np
import pytest
import torch
from PIL import Image

from chexone.data.collate import IGNORE_INDEX, PromptCollator, SFTCollator
from chexone.data.sample import Sample
from chexone.model.processor import PromptEncoder
from chexone.tasks.base import PromptStyle
from chexone.tasks.builtin import BUILTIN_TASKS


def lookup(name):
    return BUILTIN_TASKS[name]()


def image(px=112, value=100):
    return Image.fromarray(np.full((px, px), value, dtype=np.uint8))


@pytest.fixture()
def encoder(tiny_processor):
    return PromptEncoder(tiny_processor)


def test_label_mask_token_by_token(encoder):
    s = Sample(id="a", task="close_vqa", question="Is there a nodule?", answer="A", options=["Yes", "No"],
               images=[image()])
    batch = SFTCollator(encoder, lookup, max_length=512)([s])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tok = encoder.tokenizer
    target_ids = tok("(A) Yes", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    # The labelled tokens are exactly the target followed by <|im_end|>, at the end of the sequence.
    labelled = [(i, l) for i, l in enumerate(labels) if l != IGNORE_INDEX]
    assert [l for _, l in labelled] == target_ids
    assert [i for i, _ in labelled] == list(range(len(ids) - len(target_ids), len(ids)))
    assert ids[-len(target_ids):] == target_ids
    # Everything before: system, user, image tokens, assistant header -> masked.
    prompt_text = tok.decode(ids[: len(ids) - len(target_ids)])
    assert prompt_text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert prompt_text.endswith("(A) Yes\n(B) No<|im_end|>\n<|im_start|>assistant\n")
    # 112x112 px -> 8x8 patches of 14 -> merged 2x2 -> 16 image tokens; all of them masked.
    n_img = sum(1 for t in ids if t == encoder.image_token_id)
    assert n_img == 16
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert batch["pixel_values"].shape[0] == 64
    assert batch["mm_token_type_ids"][0].sum().item() == 16


def test_padding_multi_image_and_too_long(encoder):
    a = Sample(id="a", task="close_vqa", question="Q?", answer="B", options=["Yes", "No"], images=[image()])
    b = Sample(id="b", task="progression_generation", question="Compare the prior and current image.",
               answer="The effusion is larger.", images=[image(value=10), image(value=200)])
    batch = SFTCollator(encoder, lookup, max_length=512)([a, b])
    assert batch["input_ids"].shape[0] == 2
    assert batch["image_grid_thw"].shape[0] == 3  # 1 + 2 images, in sample order
    assert batch["pixel_values"].shape[0] == 3 * 64
    lengths = batch["attention_mask"].sum(1).tolist()
    short = int(np.argmin(lengths))
    assert batch["attention_mask"][short, -1] == 0  # right padding
    assert (batch["labels"][short][batch["attention_mask"][short] == 0] == IGNORE_INDEX).all()
    # A sample over max_length is dropped and counted.
    tiny = SFTCollator(encoder, lookup, max_length=20)([a, b])
    assert tiny["num_samples"] == 0 and tiny["skipped_too_long"] == 2


def test_reasoning_auto_uses_trace(encoder):
    s = Sample(id="r", task="close_vqa", question="Q?", answer="A", options=["Yes", "No"], images=[],
               reasoning="Step 1.")
    batch = SFTCollator(encoder, lookup, max_length=512, reasoning="auto")([s])
    text = encoder.tokenizer.decode(batch["input_ids"][0])
    assert "Please reason step by step" in text and text.endswith("Step 1.\n\n**Final Answer:** \\boxed{(A) Yes}<|im_end|>")
    plain = SFTCollator(encoder, lookup, max_length=512, reasoning="never")([s])
    assert "Please reason" not in encoder.tokenizer.decode(plain["input_ids"][0])
    with pytest.raises(ValueError, match="data.reasoning"):
        SFTCollator(encoder, lookup, reasoning="sometimes")


def test_prompt_collator_left_pads(encoder):
    a = Sample(id="a", task="close_vqa", question="Q?", answer="B", options=["Yes", "No"], images=[image()])
    b = Sample(id="b", task="open_vqa", question="What is the most obvious abnormality in this image?",
               answer="nodule", images=[image()])
    batch = PromptCollator(encoder, lookup, reasoning="never")([a, b])
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]
    short = int(batch["attention_mask"].sum(1).argmin())
    assert batch["attention_mask"][short, 0] == 0
    tail = encoder.tokenizer.decode(batch["input_ids"][0, -8:])
    assert tail.endswith("<|im_start|>assistant\n")


def test_samples_their_task_refuses_are_skipped_and_counted(encoder, caplog):
    good = Sample(id="ok", task="close_vqa", question="Is there a nodule?", answer="A", options=["Yes", "No"],
                  images=[image()])
    no_options = Sample(id="no-options", task="close_vqa", question="Is there a nodule?", answer="A", images=[image()])
    bad_letter = Sample(id="bad-letter", task="close_vqa", question="Q?", answer="maybe", options=["Yes", "No"],
                        images=[image()])
    sft = SFTCollator(encoder, lookup, max_length=512)([no_options, good, bad_letter])
    assert sft["num_samples"] == 1 and sft["skipped_invalid"] == 2
    prompts = PromptCollator(encoder, lookup, reasoning="always")([no_options, good, bad_letter])
    assert [s.id for s in prompts["samples"]] == ["ok"] and [s.id for s in prompts["invalid"]] == ["no-options",
                                                                                                   "bad-letter"]
    assert "skipping sample 'no-options' (task close_vqa)" in caplog.text and "needs 'options'" in caplog.text


def test_prompt_cache_gives_the_fresh_encoding_and_skips_the_processor(encoder, monkeypatch):
    a = Sample(id="a", task="close_vqa", question="Q?", answer="B", options=["Yes", "No"], images=[image()])
    b = Sample(id="b", task="progression_generation", question="Compare.", answer="Worse.",
               images=[image(value=10), image(value=200)])
    calls = []
    original = encoder.encode_prompt
    monkeypatch.setattr(encoder, "encode_prompt", lambda *args: calls.append(1) or original(*args))
    cached = PromptCollator(encoder, lookup, reasoning="auto")
    first = cached([a, b])
    again = cached([b, a])  # drawn again, in another order
    assert len(calls) == 2 and cached.cache_hits == 2
    fresh = PromptCollator(encoder, lookup, reasoning="auto", cache_size=0)([b, a])
    assert len(calls) == 4  # no cache: encoded every time
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(again[key], fresh[key]), key
    assert torch.equal(first["input_ids"][0], again["input_ids"][1])
    # what the encoding depends on is in the key: reasoning mode, style, text and pixels under the same id
    calls.clear()
    cached.reasoning = "always"
    cached([a])
    cached.style = PromptStyle(system_prompt="Another system prompt.")
    cached([a])
    edited_text = Sample(id="a", task="close_vqa", question="Another question?", answer="B", options=["Yes", "No"],
                         images=[image()])
    edited_pixels = Sample(id="a", task="close_vqa", question="Q?", answer="B", options=["Yes", "No"],
                           images=[image(value=101)])
    out = cached([edited_text, edited_pixels])
    assert len(calls) == 4
    assert "Another question?" in encoder.tokenizer.decode(out["input_ids"][0])


def test_prompt_cache_bounds_hold(encoder):
    samples = [Sample(id=str(i), task="close_vqa", question="Q?", answer="B", options=["Yes", "No"],
                      images=[image(value=i)]) for i in range(5)]
    by_count = PromptCollator(encoder, lookup, cache_size=2)
    for s in samples:
        by_count([s])
        assert len(by_count.cache) <= 2
    by_count([samples[3]])  # recently used: still cached
    assert by_count.cache_hits == 1
    by_count([samples[0]])  # least recently used: evicted long ago
    assert by_count.cache_hits == 1
    one = by_count.cache[next(iter(by_count.cache))][1]  # bytes of one entry (64 patches of float32 pixels + ids)
    assert one > 64 * 4
    by_bytes = PromptCollator(encoder, lookup, cache_bytes=2 * one + one // 2)
    for s in samples:
        by_bytes([s])
        assert by_bytes.cached_bytes <= 2 * one + one // 2 and len(by_bytes.cache) <= 2
    assert by_bytes.cached_bytes == sum(size for _, size in by_bytes.cache.values())
    too_small = PromptCollator(encoder, lookup, cache_bytes=one // 2)
    too_small([samples[0]])
    assert not too_small.cache and too_small.cached_bytes == 0
