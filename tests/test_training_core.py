"""Training core: the LR schedule against hand-computed values, the answer-only loss against HF's own loss."""

import math

import numpy as np
import pytest
from PIL import Image

from chexone.data.collate import SFTCollator
from chexone.data.sample import Sample
from chexone.model.processor import PromptEncoder
from chexone.tasks.builtin import BUILTIN_TASKS
from chexone.training.core import lr_multiplier, sft_loss


def test_lr_schedule_hand_values():
    kw = dict(max_steps=100, warmup_ratio=0.05, scheduler="cosine")
    # warmup = ceil(5) = 5 steps: (s+1)/6
    assert lr_multiplier(0, **kw) == pytest.approx(1 / 6)
    assert lr_multiplier(4, **kw) == pytest.approx(5 / 6)
    assert lr_multiplier(5, **kw) == pytest.approx(1.0)
    # halfway through the decay: progress = (52.5-5)/95 -> use step 52 exactly: (47/95)
    assert lr_multiplier(52, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 47 / 95)))
    assert lr_multiplier(100, **kw) == pytest.approx(0.0)
    assert lr_multiplier(100, **kw, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(50, max_steps=100, warmup_ratio=0.0, scheduler="linear") == pytest.approx(0.5)
    assert lr_multiplier(70, max_steps=100, warmup_ratio=0.0, scheduler="constant") == 1.0
    with pytest.raises(ValueError, match="optim.scheduler"):
        lr_multiplier(50, max_steps=100, warmup_ratio=0.0, scheduler="step")


def test_sft_loss_matches_hf_loss_on_answer_tokens(tiny_model, tiny_processor):
    enc = PromptEncoder(tiny_processor)
    im = Image.fromarray((np.arange(112 * 112) % 251).astype(np.uint8).reshape(112, 112))
    samples = [
        Sample(id="a", task="close_vqa", question="Is there a nodule?", answer="A", options=["Yes", "No"],
               images=[im]),
        Sample(id="b", task="open_vqa", question="Which side?", answer="left lung base", images=[im]),
    ]
    batch = SFTCollator(enc, lambda n: BUILTIN_TASKS[n](), max_length=512)(samples)
    tiny_model.eval()
    loss, n = sft_loss(tiny_model, batch)
    ref = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                     mm_token_type_ids=batch["mm_token_type_ids"], labels=batch["labels"])
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    # gradients flow into the language model and the vision merger
    loss.backward()
    assert tiny_model.model.visual.merger.mlp[0].weight.grad.abs().sum() > 0
    assert tiny_model.lm_head.weight.grad.abs().sum() > 0


def test_majority_baseline_per_question_group():
    from chexone.evaluation.scoring import majority_baseline

    rows = [("q1", "A"), ("q1", "A"), ("q1", "B"), ("q2", "C"), ("q2", "D"), ("q2", "D"), ("q2", "D")]
    # q1: 2 of 3 by answering A; q2: 3 of 4 by answering D -> 5/7
    assert majority_baseline(rows) == pytest.approx(5 / 7)
    assert majority_baseline([]) == 0.0


def test_optimizer_groups_per_part_lr_scale_and_no_decay(tiny_model):
    from omegaconf import OmegaConf

    from chexone.config.schema import OptimConfig
    from chexone.model.loading import apply_freezing, model_parts
    from chexone.training.core import build_optimizer

    apply_freezing(tiny_model, vision=False, merger=False, llm=False)
    optim = OmegaConf.structured(OptimConfig)
    optim.lr, optim.weight_decay, optim.lr_scale.vision, optim.lr_scale.merger = 1e-3, 0.1, 0.1, 0.5
    opt = build_optimizer(tiny_model, optim, max_steps=10)["optimizer"]
    lr_of = {id(p): (g["initial_lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    parts = model_parts(tiny_model)
    for part, expected in (("vision", 1e-4), ("merger", 5e-4), ("llm", 1e-3)):
        for m in parts[part]:
            for p in m.parameters():
                assert lr_of[id(p)][0] == pytest.approx(expected), part
    # biases and norms get no weight decay; matrices do
    norm = tiny_model.model.language_model.norm.weight
    assert lr_of[id(norm)][1] == 0.0
    assert lr_of[id(tiny_model.model.language_model.layers[0].mlp.up_proj.weight)][1] == 0.1
    # every trainable parameter is in exactly one group
    assert sum(len(g["params"]) for g in opt.param_groups) == len([p for p in tiny_model.parameters()
                                                                    if p.requires_grad])
