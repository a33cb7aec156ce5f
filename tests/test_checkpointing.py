"""Resume and logs lose nothing: atomic checkpoint writes (kill -9 mid-write), broken checkpoints (fallback or one clear
line), metrics.csv and the W&B run continuing across a crash and resume."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import tiny_demo_overrides

ROOT = Path(__file__).resolve().parents[1]
FAST = {"trainer.checkpoint_every_n_steps": 1, "export_hf": "false", "data.val": "[]", "logger": "csv"}


def _fit(out, **extra):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    return run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **{**FAST, **extra})))


def _step(path):
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def _train_steps(out):
    rows = list(csv.DictReader((Path(out) / "csv" / "metrics.csv").open()))
    return [int(float(r["step"])) for r in rows if r.get("train/loss")]


def _env(cache_dir):
    return {**os.environ, "PYTHONPATH": str(ROOT), "CHEXONE_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, cache_dir, demo_shards, tiny_dir):
    """A finished 2-step run: step-000001.ckpt, step-000002.ckpt and last.ckpt (step 2)."""
    out = tmp_path_factory.mktemp("good") / "run"
    _fit(out, **{"trainer.max_steps": 2})
    return out


@pytest.fixture()
def run_copy(good_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(good_run, out)  # copies file contents: last.ckpt is no longer a hard link to step-000002.ckpt
    return out


# ------------------------------------------------------------------------------------------------ atomic writes

RUNNER = """
import io, os, shutil, sys, time
import torch

real_save = torch.save


def paused_save(obj, f, *args, **kwargs):
    # The checkpoint of step 2, written to a file: write half of its bytes, say so, and hang (the test kills us here).
    if isinstance(f, (str, os.PathLike)) and isinstance(obj, dict) and obj.get("global_step") == 2:
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        with open(f, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        open(os.environ["PAUSED_MARKER"], "w").write(str(f))
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)


def paused_copyfile(src, dst, *args, **kwargs):
    # Moving a file from another filesystem (Lightning's own save goes through the system temp dir) is a copy into
    # the final name: copy half of it and hang there.
    if os.path.basename(str(dst)) == "step-000002.ckpt":
        data = open(src, "rb").read()
        with open(dst, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        open(os.environ["PAUSED_MARKER"], "w").write(str(dst))
        time.sleep(600)
    return real_copyfile(src, dst, *args, **kwargs)


real_copyfile = shutil.copyfile
torch.save, shutil.copyfile = paused_save, paused_copyfile
from chexone.config.load import load_config
from chexone.training.run import run_fit

run_fit(load_config("stage1_sft", sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_leaves_last_complete_and_resume_cleans_up(tmp_path, cache_dir, demo_shards,
                                                                                    tiny_dir, capsys):
    from chexone.training.checkpointing import partial_files

    out, marker = tmp_path / "run", tmp_path / "paused"
    (tmp_path / "runner.py").write_text(RUNNER)
    args = tiny_demo_overrides(out, **{**FAST, "trainer.max_steps": 3})
    env = {**_env(cache_dir), "PAUSED_MARKER": str(marker)}
    shm = Path("/dev/shm")  # the system temp dir on another filesystem than the output dir, as on many clusters
    other_fs = shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev
    if other_fs:
        env["TMPDIR"] = tempfile.mkdtemp(dir=shm)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert marker.exists(), (proc.poll(), proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if other_fs:
            shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    ckpts = out / "checkpoints"
    half = Path(marker.read_text())
    assert half.exists() and half.parent == ckpts
    assert half in partial_files(ckpts), f"{half.name} holds half a checkpoint under a checkpoint's name"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step-000001.ckpt"]
    assert _step(ckpts / "last.ckpt") == 1  # last.ckpt still names the complete step-1 checkpoint
    # The next start removes the half-written file, never resumes from it, and continues from step 1.
    summary = _fit(out, **{"trainer.max_steps": 3, "trainer.ckpt_path": "last"})
    assert f"removed {half}: a checkpoint write cut short by an earlier run" in capsys.readouterr().out
    assert summary["global_step"] == 3 and _step(ckpts / "last.ckpt") == 3
    assert partial_files(ckpts) == [] and not half.exists()
    assert _train_steps(out) == [0, 1, 2]  # steps logged before the kill kept (flushed every step), none twice


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from chexone.training.checkpointing import DurableCheckpointIO

    io_, path = DurableCheckpointIO(), tmp_path / "ckpts" / "step-000001.ckpt"
    io_.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    assert _step(path) == 1

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        io_.save_checkpoint({"global_step": 2, "w": torch.zeros(3), "bad": Unpicklable()}, path)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):  # half the bytes reach the disk, then the disk is full
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04" + b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io_.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert _step(path) == 1 and sorted(p.name for p in path.parent.iterdir()) == ["step-000001.ckpt"]


class _RefuseToSave(Callback):
    """Raise from ``on_save_checkpoint`` at step ``at`` (as the non-finite-weights guard does)."""

    def __init__(self, at):
        self.at = at

    def on_save_checkpoint(self, trainer, module, checkpoint):
        if trainer.global_step == self.at:
            raise RuntimeError("refusing to write this checkpoint")


def test_an_exception_while_saving_leaves_no_partial_file(tmp_path, cache_dir, demo_shards, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="refusing to write"):
        run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **{**FAST, "trainer.max_steps": 3})),
                callbacks=[_RefuseToSave(at=2)])
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step-000001.ckpt"]
    assert _step(ckpts / "last.ckpt") == 1


def test_last_is_a_hard_link_to_the_step_checkpoint(good_run):
    ckpts = good_run / "checkpoints"
    assert (ckpts / "last.ckpt").samefile(ckpts / "step-000002.ckpt")  # one write per checkpoint, not two
    assert _step(ckpts / "last.ckpt") == 2


# ------------------------------------------------------------------------------------------------ broken checkpoints


def _break(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.unlink()  # replace the file (last.ckpt may share its data with step-000002.ckpt through a hard link)
    if how == "zero-byte":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random-bytes":
        path.write_bytes(os.urandom(len(data)))
    elif how == "dangling-link":
        path.symlink_to("step-999999.ckpt")
    # "missing": leave it deleted


@pytest.mark.parametrize("how,reason", [("zero-byte", "is empty (0 bytes)"),
                                        ("truncated", "is not a complete checkpoint"),
                                        ("random-bytes", "is not a complete checkpoint"),
                                        ("missing", "does not exist"),
                                        ("dangling-link", "is a link to step-999999.ckpt, which does not exist")])
def test_a_broken_last_falls_back_to_the_newest_good_step_checkpoint(run_copy, how, reason):
    from chexone.training.checkpointing import resolve_ckpt_path

    ckpts = run_copy / "checkpoints"
    _break(ckpts / "last.ckpt", how)
    path, notice = resolve_ckpt_path("last", ckpts)
    assert path == str(ckpts / "step-000002.ckpt")
    assert f"{ckpts / 'last.ckpt'} {reason}" in notice and "instead" in notice and path in notice
    assert "\n" not in notice


def test_a_broken_last_resumes_from_the_previous_checkpoint_end_to_end(run_copy, capsys):
    ckpts = run_copy / "checkpoints"
    with open(ckpts / "step-000002.ckpt", "r+b") as f:  # a corrupted step 2, and last.ckpt with it
        f.truncate(f.seek(0, 2) // 3)
    shutil.copy(ckpts / "step-000002.ckpt", ckpts / "last.ckpt")
    summary = _fit(run_copy, **{"trainer.max_steps": 3, "trainer.ckpt_path": "last"})
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if "trainer.ckpt_path=last" in ln)
    assert str(ckpts / "last.ckpt") in line and str(ckpts / "step-000002.ckpt") in line
    assert line.endswith(f"resuming from the newest good checkpoint {ckpts / 'step-000001.ckpt'} instead")
    assert summary["global_step"] == 3 and _step(ckpts / "last.ckpt") == 3 and _step(ckpts / "step-000002.ckpt") == 2
    assert _train_steps(run_copy) == [0, 1, 2]


def test_a_newer_step_checkpoint_than_last_is_preferred(run_copy):
    from chexone.training.checkpointing import resolve_ckpt_path

    ckpts = run_copy / "checkpoints"
    shutil.copy(ckpts / "step-000001.ckpt", ckpts / "last.ckpt")  # killed after step 2, before last.ckpt was updated
    os.utime(ckpts / "last.ckpt", ns=(1, 1))
    path, notice = resolve_ckpt_path("last", ckpts)
    assert path == str(ckpts / "step-000002.ckpt") and "newer than" in notice


@pytest.mark.slow
def test_no_good_checkpoint_is_one_error_line_with_exit_code_2(run_copy, cache_dir):
    ckpts = run_copy / "checkpoints"
    for p in list(ckpts.glob("*.ckpt")):
        _break(p, "zero-byte")
    proc = subprocess.run([sys.executable, "-m", "chexone.fit", "recipe=stage1_sft", *tiny_demo_overrides(
        run_copy, **{**FAST, "trainer.max_steps": 3, "trainer.ckpt_path": "last"})], capture_output=True, text=True,
        env=_env(cache_dir), cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert f"no usable checkpoint in {ckpts}" in line and "step-000001.ckpt is empty (0 bytes)" in line
    assert "trainer.ckpt_path=<a good checkpoint file>" in line
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step-000001.ckpt", "step-000002.ckpt"]


def test_an_explicit_bad_checkpoint_is_a_clear_error(run_copy, tmp_path):
    from chexone.training.checkpointing import CheckpointError, resolve_ckpt_path

    ckpts = run_copy / "checkpoints"
    with pytest.raises(CheckpointError, match=r"trainer.ckpt_path=\S+/nope.ckpt does not exist\. Pass a good"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), ckpts)
    _break(ckpts / "step-000001.ckpt", "truncated")
    with pytest.raises(CheckpointError, match="step-000001.ckpt is not a complete checkpoint"):
        _fit(run_copy, **{"trainer.max_steps": 3, "trainer.ckpt_path": str(ckpts / "step-000001.ckpt")})
    assert resolve_ckpt_path(str(ckpts / "step-000002.ckpt"), ckpts) == (str(ckpts / "step-000002.ckpt"), None)


def test_a_checkpoint_that_fails_to_load_is_one_clear_error(run_copy):
    import zipfile

    from chexone.training.checkpointing import CheckpointError, checkpoint_problem

    bad = run_copy / "checkpoints" / "step-000002.ckpt"
    bad.unlink()
    with zipfile.ZipFile(bad, "w") as z:  # a zip index and data.pkl, so it passes the cheap check
        z.writestr("archive/data.pkl", b"not a pickle")
        z.writestr("archive/version", b"3\n")
    assert checkpoint_problem(bad) is None
    with pytest.raises(CheckpointError, match=r"step-000002.ckpt could not be loaded \(.*\)\. Delete it or pass"):
        _fit(run_copy, **{"trainer.max_steps": 3, "trainer.ckpt_path": str(bad)})


# ------------------------------------------------------------------------------------------------ logs


class _Crash(Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def test_metrics_csv_keeps_the_steps_before_a_crash_and_logs_each_step_once(tmp_path, cache_dir, demo_shards, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):  # checkpoint at step 3, rows logged up to step 5
        run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **{
            **FAST, "trainer.max_steps": 6, "trainer.checkpoint_every_n_steps": 3})), callbacks=[_Crash(at=5)])
    assert _train_steps(out) == [0, 1, 2, 3, 4]
    _fit(out, **{"trainer.max_steps": 6, "trainer.checkpoint_every_n_steps": 3, "trainer.ckpt_path": "last"})
    assert _train_steps(out) == [0, 1, 2, 3, 4, 5]  # 0-2 from the first run, 3-5 logged again after the resume
    superseded = list(csv.DictReader((out / "csv" / "metrics.superseded.csv").open()))
    assert [int(float(r["step"])) for r in superseded if r.get("train/loss")] == [3, 4]


@pytest.mark.slow
def test_wandb_run_id_is_reused_on_resume(tmp_path, cache_dir, demo_shards, tiny_dir, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    try:
        _fit(out, **{"trainer.max_steps": 1, "logger": "wandb"})
        wandb.finish()
        first = (out / "wandb" / "chexone-run-id.txt").read_text().strip()
        time.sleep(1.1)  # offline run directories are named offline-run-<second>-<run id>
        _fit(out, **{"trainer.max_steps": 2, "logger": "wandb", "trainer.ckpt_path": "last"})
        wandb.finish()
        runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
        assert len(runs) == 2 and all(r.endswith(f"-{first}") for r in runs), runs  # two sessions, one W&B run
        _fit(out, **{"trainer.max_steps": 1, "logger": "wandb"})  # a fresh run in the same dir: a new W&B run
        wandb.finish()
        second = (out / "wandb" / "chexone-run-id.txt").read_text().strip()
        assert second != first and any((out / "wandb").glob(f"offline-run-*-{second}"))
    finally:
        wandb.finish()
