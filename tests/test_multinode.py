"""Multi-node training as two nodes of one process each on 127.0.0.1: launched by torchrun (static rendezvous, one
``torchrun --nnodes 2 --node-rank R`` per node) and by SLURM's environment variables (what ``srun`` sets for each
task). SFT and GRPO, DDP and FSDP2, a few steps each: both nodes run the same steps and end with identical full
weights, which moved from the initial ones."""

import hashlib
import json
import os
import socket
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

    from chexone.registry import REWARDS

    out, stage, strategy = sys.argv[1], sys.argv[2], sys.argv[3]
    # a reward a random tiny policy moves at once: the share of 'e' characters
    REWARDS.register("test_e_fraction", lambda responses, samples, **_: [r.count("e") / max(1, len(r))
                                                                         for r in responses])

    def full_state(module):
        if getattr(module, "_sharded", False):  # FSDP2: gather the full tensors on every rank
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            return get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True))
        return module.model.state_dict()

    class Record(Callback):
        def on_train_end(self, trainer, module):
            h = hashlib.sha256()
            for name, p in sorted(full_state(module).items()):
                h.update(name.encode()); h.update(p.detach().cpu().float().numpy().tobytes())
            with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
                json.dump({"hash": h.hexdigest(), "step": trainer.global_step, "world": trainer.world_size,
                           "node": trainer.node_rank, "nodes": trainer.num_nodes,
                           "env": type(trainer.strategy.cluster_environment).__name__}, f)

    common = ["model=tiny", "data=demo", "logger=none", f"output_dir={out}", "trainer.devices=1",
              "trainer.num_nodes=2", f"trainer.strategy={strategy}", "trainer.accelerator=cpu",
              "trainer.progress_bar=false", "export_hf=false", "trainer.checkpoint_every_n_steps=100",
              "data.num_workers=0"]
    if stage == "sft":
        cfg = load_config("stage1_sft", common + ["trainer.max_steps=2", "trainer.global_batch_size=4",
                                                  "data.micro_batch_size=2", "trainer.val_every_n_steps=0",
                                                  "trainer.val_samples=2", "trainer.val_max_new_tokens=4"])
    else:
        cfg = load_config("stage2_grpo", common + ["trainer.max_steps=2", "grpo.init_from=''",
                                                   "grpo.num_generations=4", "grpo.prompts_per_step=2",
                                                   "grpo.micro_batch_prompts=1", "grpo.max_completion_length=10",
                                                   "grpo.loss_type=dapo", "grpo.beta=0", "optim.lr=1e-3",
                                                   "grpo.rewards=[{name: test_e_fraction}]",
                                                   # the training split as drawn (its first prompts: no report task,
                                                   # whose real scorer models are not here), not the demo's pool
                                                   "data.demo_train_split=train", "grpo.balance_tasks=false"])
    run_fit(cfg, callbacks=[Record()])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, cache_dir, stage, strategy, launcher):
    script = tmp_path / "node.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC", "MASTER_"))}
    base.update(CHEXONE_CACHE=str(cache_dir), PYTHONPATH=str(Path(__file__).resolve().parents[1]),
                OMP_NUM_THREADS="1")
    procs = []
    for node in (0, 1):
        if launcher == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
                   str(script), str(out), stage, strategy]
            env = base
        else:  # what `srun` sets for task `node` of a 2-node, 1-task-per-node allocation
            cmd = [sys.executable, str(script), str(out), stage, strategy]
            env = {**base, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2",
                   "SLURM_PROCID": str(node), "SLURM_LOCALID": "0", "SLURM_NODEID": str(node),
                   "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "chexone-test", "SLURM_NODELIST": "127.0.0.1",
                   "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=420)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _initial_hash(tiny_dir) -> str:
    from transformers import AutoModelForImageTextToText

    h = hashlib.sha256()
    for name, p in sorted(AutoModelForImageTextToText.from_pretrained(tiny_dir).state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stage,strategy,launcher", [
    ("sft", "ddp", "torchrun"),
    ("sft", "fsdp2", "torchrun"),
    ("grpo", "ddp", "slurm"),
    ("grpo", "fsdp2", "torchrun"),
])
@pytest.mark.slow
def test_two_nodes_on_localhost_end_with_identical_weights(tmp_path, cache_dir, tiny_dir, demo_shards, stage,
                                                          strategy, launcher):
    r0, r1 = _launch(tmp_path, cache_dir, stage, strategy, launcher)
    env = "TorchElasticEnvironment" if launcher == "torchrun" else "SLURMEnvironment"
    for node, r in enumerate((r0, r1)):
        assert r["world"] == 2 and r["nodes"] == 2 and r["node"] == node and r["env"] == env
        assert r["step"] == 2
    assert r0["hash"] == r1["hash"]  # the same full weights on both nodes
    assert r0["hash"] != _initial_hash(tiny_dir)  # ...after real updates


@pytest.mark.parametrize("env,expected", [
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),
    ({"RANK": "1", "LOCAL_RANK": "0", "NODE_RANK": "0"}, False),  # torchrun, second node: local rank 0 but not global
    ({"SLURM_PROCID": "1", "SLURM_JOB_NAME": "train", "SLURM_LOCALID": "0"}, False),
    ({"SLURM_PROCID": "0", "SLURM_JOB_NAME": "train"}, True),
    ({"SLURM_PROCID": "1", "SLURM_JOB_NAME": "interactive"}, True),  # Lightning launches inside an interactive shell
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # Lightning's own launcher
    ({}, True),
])
def test_global_rank_zero_before_lightning_starts(monkeypatch, env, expected):
    from chexone.training.run import launched_as_global_rank_zero

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_JOB_NAME", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launched_as_global_rank_zero() is expected
