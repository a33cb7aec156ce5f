"""Training core: the LR schedule against hand-computed values, the answer-only loss against HF's own loss."""

import math

import numpy as np
import pytest
import torch
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


# ------------------------------------------------------------------ chunked log-probs


def naive_logps(lm_head, hidden, targets, temperature=1.0):
    """The unchunked reference: the full [N, vocab] float32 log-softmax."""
    log_probs = torch.log_softmax(lm_head(hidden).float() / temperature, dim=-1)
    return log_probs.gather(1, targets[:, None]).squeeze(1), -(log_probs.exp() * log_probs).sum(-1)


def head_and_inputs(n=37, hidden_size=8, vocab=503, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden_size, vocab, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden_size, generator=g))
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=g))
    hidden = torch.randn(n, hidden_size, generator=g)
    targets = torch.randint(0, vocab, (n,), generator=g)
    return head, hidden, targets


@pytest.mark.parametrize("chunk", [1, 10, 37, 64])  # 10 does not divide 37; 64 > N
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_selected_token_logps_values_and_gradients_equal_the_unchunked_computation(chunk, temperature):
    from chexone.training.core import selected_token_logps

    head, hidden, targets = head_and_inputs(bias=True)
    upstream = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(1))  # any loss, not just a sum
    grads = []
    for fn in ("naive", "chunked"):
        head.zero_grad()
        h = hidden.clone().requires_grad_(True)
        if fn == "naive":
            lp, ent = naive_logps(head, h, targets, temperature)
        else:
            lp, ent = selected_token_logps(head, h, targets, temperature, with_entropy=True, chunk_tokens=chunk)
            assert lp.dtype == torch.float32 and lp.shape == (37,) and not ent.requires_grad
        (lp * upstream).sum().backward()
        grads.append((lp.detach(), ent.detach(), h.grad, head.weight.grad.clone(), head.bias.grad.clone()))
    for ref, got in zip(*grads):
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    # without entropy: None; without gradients: the same values
    with torch.no_grad():
        lp, ent = selected_token_logps(head, hidden, targets, temperature, chunk_tokens=chunk)
    assert ent is None and torch.allclose(lp, grads[0][0], atol=1e-5)


def test_selected_token_logps_never_holds_full_vocabulary_logits_for_more_than_a_chunk():
    from torch.utils._python_dispatch import TorchDispatchMode

    from chexone.training.core import selected_token_logps

    n, chunk, vocab = 37, 10, 503
    head, hidden, targets = head_and_inputs(n=n, hidden_size=8, vocab=vocab)

    def saved_sizes(fn):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        h = hidden.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lp = fn(h)
        return sizes, lp, h

    # what autograd keeps for backward: the hook sees the N x vocab tensors of the naive computation, not ours
    naive_sizes, _, _ = saved_sizes(lambda h: naive_logps(head, h, targets)[0])
    assert max(naive_sizes) >= n * vocab
    sizes, lp, h = saved_sizes(lambda h: selected_token_logps(head, h, targets, chunk_tokens=chunk)[0])
    assert max(sizes) < n * vocab and max(sizes) <= chunk * vocab

    class LargestOutput(TorchDispatchMode):
        """The largest tensor any op creates (forward and backward)."""

        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    # every tensor created, forward and backward (where the chunk's logits are recomputed): at most one chunk's
    # logits (the weight gradient, vocab x 8, is smaller)
    h = hidden.clone().requires_grad_(True)
    with LargestOutput() as mode:
        lp, ent = selected_token_logps(head, h, targets, with_entropy=True, chunk_tokens=chunk)
        lp.sum().backward()
    assert mode.largest <= chunk * vocab
    assert h.grad is not None and head.weight.grad is not None
    with LargestOutput() as naive_mode:  # the same measure sees the naive computation's full logits
        naive_logps(head, hidden.clone().requires_grad_(True), targets)[0].sum().backward()
    assert naive_mode.largest >= n * vocab


def test_token_logps_and_sft_loss_score_tokens_identically(tiny_model, tiny_processor):
    from chexone.training.core import token_logps

    enc = PromptEncoder(tiny_processor)
    samples = [Sample(id="a", task="open_vqa", question="Which side?", answer="left lung base", images=[]),
               Sample(id="b", task="open_vqa", question="Size?", answer="small", images=[])]
    batch = SFTCollator(enc, lambda n: BUILTIN_TASKS[n](), max_length=512)(samples)
    tiny_model.eval()
    mask = batch["labels"] != -100
    loss, n = sft_loss(tiny_model, batch)
    lp = token_logps(tiny_model, batch, mask)
    assert loss.item() == pytest.approx(-(lp.sum() / n).item(), rel=1e-6)
    # the reference: HF's own full logits, log-softmax, at the labelled tokens
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    ref = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    assert torch.allclose(lp[:, 1:][mask[:, 1:]], ref[mask[:, 1:]], atol=1e-5)


def test_fused_adamw_step_equals_the_unfused_step(tiny_model):
    from omegaconf import OmegaConf

    from chexone.config.schema import OptimConfig
    from chexone.training.core import build_optimizer

    optim = OmegaConf.structured(OptimConfig)
    optim.lr, optim.weight_decay = 1e-2, 0.1
    opt = build_optimizer(tiny_model, optim, max_steps=10)["optimizer"]
    assert opt.defaults["fused"] is True  # torch 2.13 has a fused AdamW for CPU float32 parameters
    params = [p for g in opt.param_groups for p in g["params"]]
    start = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) for p in params]
    # the reference: torch's per-parameter loop with the same groups (lr, weight decay) and hyperparameters
    reference = [torch.nn.Parameter(s.clone()) for s in start]
    by_id = {id(p): r for p, r in zip(params, reference)}
    ref_groups = [{**{k: v for k, v in grp.items() if k != "params"}, "params": [by_id[id(p)] for p in grp["params"]]}
                  for grp in opt.param_groups]
    ref_opt = torch.optim.AdamW(ref_groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, foreach=False)
    for group in ref_opt.param_groups:
        group["fused"], group["foreach"] = None, False
    for _ in range(2):
        for p, r, grad in zip(params, reference, grads):
            p.grad, r.grad = grad.clone(), grad.clone()
        opt.step()
        ref_opt.step()
    moved = 0
    for p, r, s in zip(params, reference, start):
        assert torch.allclose(p.detach(), r.detach(), atol=1e-6, rtol=1e-5)
        moved += int(not torch.equal(p.detach(), s))
    assert moved == len(params)
    # fp16 loss scaling: Lightning refuses clipping with a fused optimizer, so it is not asked for
    assert not build_optimizer(tiny_model, optim, max_steps=10, fused=False)["optimizer"].defaults["fused"]


@pytest.mark.parametrize("recipe", ["stage1_sft", "stage2_grpo"])
def test_fused_adamw_is_clipped_under_bf16_mixed_precision(tmp_path, cache_dir, demo_shards, tiny_dir, recipe):
    """Lightning's mixed-precision plugin refuses to clip gradients for a fused optimizer (even under bf16, which has
    no loss scaler): chexone clips itself, so SFT (automatic optimisation) and GRPO (its own step) train with fused
    AdamW in bf16-mixed, and the clipped update is what the norm bound says."""
    from lightning.pytorch.callbacks import Callback

    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    seen = {}

    class Inspect(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            seen["fused"] = bool(optimizer.defaults.get("fused"))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            params = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
            seen.setdefault("steps", 0)
            seen["steps"] += 1
            seen["params"] = len(params)

    overrides = ["model=tiny", "data=demo", "logger=none", f"output_dir={tmp_path}", "trainer.progress_bar=false",
                 "data.num_workers=0", "trainer.max_steps=1", "trainer.precision=bf16-mixed",
                 "optim.max_grad_norm=0.001", "export_hf=false", "trainer.checkpoint_every_n_steps=100"]
    if recipe == "stage1_sft":
        overrides += ["data.micro_batch_size=2", "trainer.global_batch_size=2", "trainer.val_every_n_steps=0",
                      "trainer.val_samples=2", "trainer.val_max_new_tokens=4"]
    else:
        from chexone.registry import REWARDS

        if "test_e_share" not in REWARDS:  # a reward that differs between completions: non-zero advantages
            REWARDS.register("test_e_share", lambda responses, samples, **_: [r.count("e") / max(1, len(r))
                                                                             for r in responses])
        overrides += ["grpo.init_from=''", "grpo.num_generations=4", "grpo.prompts_per_step=2", "grpo.beta=0",
                      "grpo.max_completion_length=12", "grpo.rewards=[{name: test_e_share}]"]
    clipped = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        total = real(params, max_norm, *a, **k)
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        clipped.append((float(total), float(after), max_norm))
        return total

    torch.nn.utils.clip_grad_norm_, saved = spy, torch.nn.utils.clip_grad_norm_
    try:
        run_fit(load_config(recipe, overrides), callbacks=[Inspect()])
    finally:
        torch.nn.utils.clip_grad_norm_ = saved
    assert seen.get("fused") is True and seen["steps"] >= 1
    assert clipped, "the gradients were not clipped"
    total, after, bound = clipped[-1]
    assert total > bound and after == pytest.approx(bound, rel=1e-3)
