"""Exact mid-epoch resume of the training stream (chexone/data/stream_position.py): a run killed after step N and
resumed from its checkpoint trains on the same samples from step N+1 on as a run that was never interrupted — one
process with DataLoader workers, two DDP processes with workers, and GRPO (whose refill stream resumes too)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chexone.data.shards import ShardTrainDataset
from chexone.data.stream_position import StampingCollate, StreamCursor, StreamPosition, set_current_cursor

SCRIPT = textwrap.dedent(
    """
    import faulthandler, hashlib, json, os, sys
    from lightning.pytorch.callbacks import Callback
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out, stage, kill_at, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    faulthandler.dump_traceback_later(420, exit=True)  # a hang fails the test with every thread's stack, not silently

    def fingerprint(batch):
        if isinstance(batch, dict):
            return hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest()[:16]
        return ",".join(s.id for s in batch)  # GRPO: the samples themselves

    class Record(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if kill_at and trainer.global_step == kill_at:
                os._exit(3)  # killed: the checkpoint of step kill_at is on disk, nothing else is flushed
            with open(os.path.join(out, f"batches{trainer.global_rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": trainer.global_step, "batch": fingerprint(batch)}) + "\\n")

    overrides = ["model=tiny", "data=demo", "logger=none", f"output_dir={out}", "trainer.progress_bar=false",
                 "export_hf=false", "trainer.checkpoint_every_n_steps=1", "trainer.max_steps=6"] + extra
    if stage == "sft":
        cfg = load_config("stage1_sft", overrides + ["trainer.val_every_n_steps=0", "data.val=[]",
                                                     "trainer.val_samples=2", "trainer.val_max_new_tokens=4",
                                                     "data.micro_batch_size=2",
                                                     "data.shuffle_buffer=16"])
    else:
        cfg = load_config("stage2_grpo", overrides + ["grpo.init_from=''", "grpo.num_generations=2",
                                                      "grpo.prompts_per_step=2", "grpo.max_completion_length=4",
                                                      "grpo.beta=0", "grpo.dynamic_sampling=true",
                                                      "grpo.max_resample_rounds=1", "data.shuffle_buffer=16",
                                                      "data.demo_train_split=train", "grpo.balance_tasks=false"])
    if __name__ == "__main__":  # DataLoader workers start from a forkserver, which imports this script
        run_fit(cfg, callbacks=[Record()])
    """
)


def _run(tmp_path, cache_dir, out, stage, kill_at, extra, expect_rc=0):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "CHEXONE_CACHE": str(cache_dir), "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(out), stage, str(kill_at), *extra], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect_rc, proc.stdout[-3000:] + proc.stderr[-3000:]


def _batches(out, rank=0):
    rows = [json.loads(line) for line in (out / f"batches{rank}.jsonl").read_text().splitlines()]
    return [(r["step"], r["batch"]) for r in rows]


def _kill_and_resume(tmp_path, cache_dir, stage, extra, ranks=(0,), kill_at=3):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    _run(tmp_path, cache_dir, whole, stage, 0, extra)
    _run(tmp_path, cache_dir, cut, stage, kill_at, extra, expect_rc=3)
    for rank in ranks:  # keep what the killed run trained on, then resume
        (cut / f"before{rank}.jsonl").write_text((cut / f"batches{rank}.jsonl").read_text())
        (cut / f"batches{rank}.jsonl").unlink()
    _run(tmp_path, cache_dir, cut, stage, 0, extra + ["trainer.ckpt_path=last"])
    for rank in ranks:
        reference = [b for s, b in _batches(whole, rank) if s >= kill_at]
        resumed = [b for s, b in _batches(cut, rank)]
        assert resumed and resumed == reference, rank
        assert len(set(reference)) > 1  # distinct batches: the comparison is not vacuous


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_sft_killed_and_resumed_sees_the_same_batches_with_workers(tmp_path, cache_dir, demo_shards, tiny_dir):
    _kill_and_resume(tmp_path, cache_dir, "sft", ["data.num_workers=2", "trainer.global_batch_size=4"])


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_ddp_killed_and_resumed_sees_the_same_batches_on_every_rank(tmp_path, cache_dir, demo_shards, tiny_dir):
    _kill_and_resume(tmp_path, cache_dir, "sft", ["data.num_workers=1", "trainer.devices=2",
                                                  "trainer.strategy=ddp", "trainer.accelerator=cpu",
                                                  "trainer.global_batch_size=4"], ranks=(0, 1))


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_grpo_killed_and_resumed_sees_the_same_prompts(tmp_path, cache_dir, demo_shards, tiny_dir):
    _kill_and_resume(tmp_path, cache_dir, "grpo", ["data.num_workers=0"])


# ------------------------------------------------------------------------------------------------ the dataset alone


def test_cursor_skips_what_was_consumed_and_counts_the_rest():
    cursor = StreamCursor(worker=1, epoch=2, skip_items=3, already_yielded=2)
    assert list(cursor.items(range(10))) == [3, 4, 5, 6, 7, 8, 9]
    assert cursor.position() == StreamPosition(1, 2, 10, 2)
    assert list(cursor.samples("ab")) == ["a", "b"] and cursor.position().yielded == 4


def test_collate_stamps_dict_and_list_batches():
    cursor, other = StreamCursor(worker=0, epoch=0), StreamCursor(worker=0, epoch=0)
    set_current_cursor(cursor, "train")
    set_current_cursor(other)  # another stream read by the same process (GRPO's refill) does not interfere
    try:
        list(cursor.samples(cursor.items(range(5))))
        list(other.items(range(2)))
        stamped = StampingCollate(lambda xs: {"n": len(xs)}, key="train")([1, 2])
        assert stamped["stream_position"] == StreamPosition(0, 0, 5, 5)
        batch = StampingCollate(list, key="train")([1, 2])
        assert batch == [1, 2] and batch.stream_position == StreamPosition(0, 0, 5, 5)
        assert StampingCollate(list)([1]).stream_position == StreamPosition(0, 0, 2, 0)
    finally:
        set_current_cursor(None, "train")
        set_current_cursor(None)


def test_dataset_resumes_exactly_past_corrupt_samples(tmp_path):
    """Positions count stream items, corrupt ones included: resuming after some were dropped gives the rest exactly."""
    import json

    from test_shards import PNG, good, record, write_tar

    shards = tmp_path / "s"
    shards.mkdir()
    undecodable = lambda j: (f"u{j}", {"json": json.dumps(record(f"u{j}", images=["img0.png"])).encode(),  # noqa
                                       "img0.png": b"not a png"})
    write_tar(shards / "x-000000.tar", [good(f"g{j}") if j % 3 else undecodable(j) for j in range(30)])
    (shards / "sizes.json").write_text(json.dumps({"x-000000.tar": 30}))
    assert PNG
    ds = ShardTrainDataset(str(shards), samples_per_epoch=20, seed=3, shuffle_buffer=4, max_skip_fraction=1.0)
    ds.set_epoch(0)
    collate = StampingCollate(list, key=ds.stream_key)
    it = iter(ds)
    first = [collate([next(it) for _ in range(3)]) for _ in range(2)]
    rest_whole = [s.id for s in it]
    ds.resume_from([first[-1].stream_position])
    rest_resumed = [s.id for s in ds]
    assert rest_resumed == rest_whole and rest_whole
    assert first[-1].stream_position.consumed > first[-1].stream_position.yielded  # corrupt items were skipped
    ds.resume_from([])
    assert [s.id for s in ds][:6] == [s.id for b in first for s in b]  # without a resume point: from the start
