"""Two-process DDP on CPU (gloo): the tiny model trains a few steps and both ranks end with identical weights,
after the same number of steps, having read different samples."""

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

    out = sys.argv[1]

    class Record(Callback):
        def __init__(self):
            self.ids = []
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.ids.append(int(batch["input_ids"].sum()))
        def on_train_end(self, trainer, module):
            h = hashlib.sha256()
            for name, p in sorted(module.model.state_dict().items()):
                h.update(name.encode()); h.update(p.detach().cpu().float().numpy().tobytes())
            with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
                json.dump({"hash": h.hexdigest(), "step": trainer.global_step, "batches": self.ids,
                           "world": trainer.world_size}, f)

    cfg = load_config("stage1_sft", ["model=tiny", "data=demo", "logger=none", f"output_dir={out}",
                                     "trainer.max_steps=3", "trainer.devices=2", "trainer.strategy=ddp",
                                     "trainer.accelerator=cpu", "trainer.global_batch_size=8",
                                     "data.micro_batch_size=2", "data.num_workers=0", "trainer.val_every_n_steps=0",
                                     "trainer.progress_bar=false", "export_hf=false", "data.val=[]",
                                     "trainer.checkpoint_every_n_steps=100"])
    run_fit(cfg, callbacks=[Record()])
    """
)


@pytest.mark.timeout(600)
def test_ddp_two_ranks_stay_in_sync(tmp_path, cache_dir, tiny_dir):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "CHEXONE_CACHE": str(cache_dir), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
                          timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["step"] == r1["step"] == 3
    # accumulation = 8 / (2 x 2 ranks) = 2 micro-batches per step on each rank
    assert len(r0["batches"]) == len(r1["batches"]) == 6
    assert r0["batches"] != r1["batches"]  # the ranks read different data...
    assert r0["hash"] == r1["hash"]  # ...and hold identical weights
