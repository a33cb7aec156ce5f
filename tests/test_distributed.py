"""Two processes on CPU (gloo), DDP and FSDP2: the tiny model trains a few steps; ranks run the same number of steps on
different samples; DDP ranks end with identical weights; FSDP2 exports the gathered full weights."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch
    from lightning.pytorch.callbacks import Callback
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out, strategy = sys.argv[1], sys.argv[2]

    class Record(Callback):
        def __init__(self):
            self.ids = []
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.ids.append(int(batch["input_ids"].sum()))
        def on_validation_end(self, trainer, module):
            with open(os.path.join(out, f"val{trainer.global_rank}.json"), "w") as f:
                json.dump(getattr(module, "last_validation", None), f)
        def on_train_end(self, trainer, module):
            h = hashlib.sha256()
            if strategy == "ddp":  # FSDP2 holds shards (DTensors): compared through the export instead
                for name, p in sorted(module.model.state_dict().items()):
                    h.update(name.encode()); h.update(p.detach().cpu().float().numpy().tobytes())
            with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
                json.dump({"hash": h.hexdigest(), "step": trainer.global_step, "batches": self.ids,
                           "world": trainer.world_size}, f)

    cfg = load_config("stage1_sft", ["model=tiny", "data=demo", "logger=none", f"output_dir={out}",
                                     "trainer.max_steps=3", "trainer.devices=2", f"trainer.strategy={strategy}",
                                     "trainer.accelerator=cpu", "trainer.global_batch_size=8",
                                     "data.micro_batch_size=2", "data.num_workers=0", "trainer.val_every_n_steps=0",
                                     "trainer.progress_bar=false", f"export_hf={strategy == 'fsdp2'}", "data.val=[]",
                                     "trainer.checkpoint_every_n_steps=100", "trainer.val_samples=16",
                                     "trainer.val_max_new_tokens=8"])
    run_fit(cfg, callbacks=[Record()])
    """
)


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_ddp_two_ranks_stay_in_sync(tmp_path, cache_dir, tiny_dir):
    r0, r1 = run_two_ranks(tmp_path, cache_dir, "ddp")
    # validation: each rank answers its share, then all ranks score all answers (the harness's code) identically
    v0, v1 = (json.loads((tmp_path / "out" / f"val{r}.json").read_text()) for r in (0, 1))
    assert v0 == v1 and "val/well_formed" in v0 and "val/loss" in v0
    assert r0["hash"] == r1["hash"]  # ...and hold identical weights


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_fsdp2_two_ranks_train_and_export_full_weights(tmp_path, cache_dir, tiny_dir):
    from transformers import AutoModelForImageTextToText

    run_two_ranks(tmp_path, cache_dir, "fsdp2")
    # The sharded weights were gathered into one ordinary HF checkpoint that reloads with every tensor present.
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out" / "hf")
    reference = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert model.state_dict().keys() == reference.state_dict().keys()
    changed = [k for k, v in model.state_dict().items() if not (v == reference.state_dict()[k]).all()]
    assert changed  # trained, not the initial weights
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").exists()


def run_two_ranks(tmp_path, cache_dir, strategy):
    script = tmp_path / "two_rank_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "CHEXONE_CACHE": str(cache_dir), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(out), strategy], env=env, capture_output=True,
                          text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["step"] == r1["step"] == 3
    # accumulation = 8 / (2 x 2 ranks) = 2 micro-batches per step on each rank
    assert len(r0["batches"]) == len(r1["batches"]) == 6
    assert r0["batches"] != r1["batches"]  # the ranks read different data
    return r0, r1


GRPO_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from lightning.pytorch.callbacks import Callback
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = sys.argv[1]

    class Steps(Callback):
        def on_train_end(self, trainer, module):
            with open(os.path.join(out, f"grpo_rank{trainer.global_rank}.json"), "w") as f:
                json.dump({"step": trainer.global_step, "world": trainer.world_size}, f)

    # the demo's own pool: a report prompt every step, so both ranks build or load the demo report scorers at once
    cfg = load_config("stage2_grpo", ["model=tiny", "data=demo", "logger=none", f"output_dir={out}",
                                      "trainer.max_steps=2", "trainer.devices=2", "trainer.strategy=ddp",
                                      "trainer.accelerator=cpu", "grpo.init_from=''", "grpo.num_generations=4",
                                      "grpo.prompts_per_step=2", "grpo.max_completion_length=12",
                                      "trainer.progress_bar=false", "export_hf=false", "grpo.loss_type=dapo"])
    run_fit(cfg, callbacks=[Steps()])
    """
)


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_grpo_ddp_two_ranks(tmp_path, cache_dir, tiny_dir, demo_shards):
    """GRPO under DDP: ranks step together (dapo's token count is all-reduced across ranks) and finish."""
    script = tmp_path / "grpo_ddp.py"
    script.write_text(GRPO_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "CHEXONE_CACHE": str(cache_dir), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
                          timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"grpo_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [2, 2] and [r["world"] for r in ranks] == [2, 2]
