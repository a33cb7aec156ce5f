"""Padding-free SFT packing (chexone/training/packing.py): the packed loss and gradients equal the ordinary padded
batch's, each sample keeps its own multimodal positions, and attention never crosses samples."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from chexone.data.collate import SFTCollator
from chexone.data.sample import Sample
from chexone.model.processor import PromptEncoder
from chexone.tasks.builtin import BUILTIN_TASKS
from chexone.training.core import batch_positions, sft_loss
from chexone.training.packing import first_fit_decreasing, packed_hidden_states, packed_sft_loss, plan_packing


def _samples():
    rng = np.random.default_rng(3)
    im = lambda h, w: Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8))  # noqa: E731
    return [
        Sample(id="a", task="close_vqa", question="Is there an effusion?", answer="A", options=["Yes", "No"],
               images=[im(112, 140)], reasoning="The costophrenic angles are sharp."),
        Sample(id="b", task="progression_generation", question="Compare the prior and the current study, please.",
               answer="Worse effusion on the left, new opacity at the right base.", images=[im(84, 112), im(112, 84)]),
        Sample(id="c", task="open_vqa", question="Which view is this?", answer="PA", images=[im(56, 84)]),
        Sample(id="d", task="findings_generation", question="Describe the findings.",
               answer="Heart size normal. Lungs clear. No pleural effusion or pneumothorax.", images=[im(112, 112)]),
    ]


@pytest.fixture()
def batch(tiny_processor):
    enc = PromptEncoder(tiny_processor)
    b = SFTCollator(enc, lambda n: BUILTIN_TASKS[n](), reasoning="auto")(_samples())
    lengths = b["attention_mask"].sum(-1).tolist()
    assert len(set(lengths)) == 4, lengths  # real padding to remove
    return b


def _model(tiny_dir, attn):
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(tiny_dir, attn_implementation=attn).train()


def test_first_fit_decreasing_by_hand():
    assert first_fit_decreasing([5, 3, 4, 2], 7) == [[0, 3], [1, 2]]  # 5+2, 4+3 (order kept inside a bin)
    assert first_fit_decreasing([9, 1], 4) == [[0], [1]]  # too long for any bin: a bin of its own
    assert first_fit_decreasing([1, 1, 1], 100) == [[0, 1, 2]]


def test_plan_packing_maps_every_token_once():
    attn = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    assert plan_packing(attn).rows == 3  # default capacity: the longest sample (4); 2 + 3 does not fit
    lay = plan_packing(attn, capacity=5)  # bins [0] and [1, 2]
    assert lay.rows == 2 and lay.width == 5
    src = lay.source[lay.filled].tolist()
    assert sorted(src) == [0, 1, 2, 3, 5, 6, 10, 11, 12]  # every real token of the [3, 5] batch exactly once
    for b in range(3):
        for t in range(int(attn[b].sum())):
            assert int(lay.source[lay.target[b, t]]) == b * 5 + t
    assert (lay.target[attn == 0] == -1).all()
    # text positions restart at every sample: row 1 holds samples 1 and 2 (2 + 3 tokens)
    assert lay.text_positions[1].tolist() == [0, 1, 0, 1, 2]
    # row 0 holds sample 0 (4 tokens) and an empty slot, which continues sample 0's count: one causal sequence
    assert lay.text_positions[0].tolist() == [0, 1, 2, 3, 4]
    one_row = plan_packing(attn, capacity=0)
    assert one_row.rows == 1 and one_row.width == 9
    with pytest.raises(ValueError, match="right-padded"):
        plan_packing(torch.tensor([[0, 1, 1]]))


@pytest.mark.parametrize("attn,capacity", [("sdpa", None), ("sdpa", 0), ("eager", None)])
def test_packed_loss_and_gradients_equal_the_padded_batch(tiny_dir, batch, attn, capacity):
    model = _model(tiny_dir, attn)
    loss_ref, n_ref = sft_loss(model, batch)
    loss_ref.backward()
    grads_ref = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss, n = packed_sft_loss(model, batch, capacity)
    loss.backward()
    assert n == n_ref
    assert torch.allclose(loss, loss_ref, rtol=1e-5, atol=1e-6), (float(loss), float(loss_ref))
    assert grads_ref  # the vision tower, the decoder and the head all get gradients
    for k, g in grads_ref.items():
        p = dict(model.named_parameters())[k]
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6), k


def test_packed_hidden_states_are_each_samples_own(tiny_dir, batch):
    """Against a reference that runs each sample alone (batch of one, no padding at all): attention does not cross
    samples and every sample keeps its multimodal positions in the packed rows."""
    model = _model(tiny_dir, "sdpa").eval()
    from chexone.training.core import hidden_states

    with torch.no_grad():
        packed, layout = packed_hidden_states(model, batch, capacity=0)
        assert layout.rows == 1
        grids, start = batch["image_grid_thw"], 0
        for b, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
            k = start + len(_samples()[b].images)  # the collator stacks images in sample order
            pix_start = int(grids[:start].prod(-1).sum())
            pix_end = int(grids[:k].prod(-1).sum())
            alone = {"input_ids": batch["input_ids"][b : b + 1, :n],
                     "attention_mask": batch["attention_mask"][b : b + 1, :n],
                     "mm_token_type_ids": batch["mm_token_type_ids"][b : b + 1, :n],
                     "pixel_values": batch["pixel_values"][pix_start:pix_end], "image_grid_thw": grids[start:k]}
            start = k
            ref = hidden_states(model, alone)[0]
            got = packed[layout.target[b, :n]]
            assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5), b
            # and the positions used are the sample's own (image rows differ from text positions)
            own = batch_positions(model, alone)[:, 0]
            assert own.shape == (3, n)


def test_sft_module_packs_when_the_recipe_says_so(tiny_dir, batch, tmp_path):
    """``data.packing`` reaches the SFT step: the step's loss equals the unpacked step's."""
    from chexone.config.load import load_config
    from chexone.model import load_pretrained
    from chexone.tasks import get_task
    from chexone.training.sft import SFTModule

    import chexone.training.sft as sft_module

    calls = []
    real = sft_module.packed_sft_loss
    sft_module.packed_sft_loss = lambda *a, **k: calls.append(1) or real(*a, **k)
    losses = []
    for packing in ("false", "true"):
        cfg = load_config("stage1_sft", [f"model.path={tiny_dir}", "data=demo", f"data.packing={packing}",
                                         f"output_dir={tmp_path}", "logger=none"])
        torch.manual_seed(0)
        module = SFTModule(cfg, load_pretrained(cfg.model, device_type="cpu"), get_task)
        module.log = lambda *a, **k: None
        losses.append(float(module.training_step(batch, 0).detach()))
        assert len(calls) == (packing == "true")
    sft_module.packed_sft_loss = real
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
