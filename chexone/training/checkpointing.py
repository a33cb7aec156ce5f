"""Durable checkpoints, and logs that survive a resume.

A run lasts days, so a crash, a ``kill -9`` or a full disk must never leave a checkpoint that looks complete but is not,
and resuming must neither pick a broken file nor lose the logged history. This module holds everything about that:

* :class:`DurableCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes each checkpoint to ``<name>.tmp-<pid>`` in
  the same directory, fsyncs it, then ``os.replace``-s it into place (and fsyncs the directory): a checkpoint path only
  ever names a complete file. ``last.ckpt`` is a hard link to the step checkpoint of the same step, swapped in the same
  way (no second multi-GB write; a full atomic write where the filesystem has no hard links). A write that fails or
  raises (a full disk, a refused non-finite checkpoint) removes its temporary file and leaves the old file untouched. A
  checkpoint that cannot be loaded raises :class:`CheckpointError` (one line) instead of a deep traceback.
* :func:`resolve_ckpt_path` turns ``trainer.ckpt_path`` (``last`` or a file) into the checkpoint to resume from after a
  cheap check (:func:`checkpoint_problem`: size and the zip index, no full read); a broken ``last.ckpt`` falls back to
  the newest good ``step-*.ckpt`` with one printed line. :func:`remove_partial_files` deletes what a killed writer left.
* :class:`ResumableCSVLogger` keeps ``metrics.csv`` across a resume; :func:`wandb_run_id` keeps one W&B run id per
  output directory so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import secrets
import string
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from chexone.config.load import ConfigError

PARTIAL_TAG = ".tmp-"  # <name>.tmp-<pid>: a checkpoint being written (or left behind by a killed writer)
LAST_NAME = "last.ckpt"
STEP_FILE = re.compile(r"^step-(\d+)\.ckpt$")
WANDB_ID_FILE = "chexone-run-id.txt"


class CheckpointError(ConfigError):
    """The checkpoint ``trainer.ckpt_path`` names (or ``last`` finds) is missing, incomplete or unreadable; the message
    names the file and says what to do. A ``ConfigError``: the command line prints it as one line, exit code 2."""


# ------------------------------------------------------------------------------------------------ atomic files


def _is_local(path: Any) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _partial_name(path: Path) -> Path:
    return path.with_name(f"{path.name}{PARTIAL_TAG}{os.getpid()}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; filesystems that cannot fsync a directory are skipped."""
    with contextlib.suppress(OSError):
        _fsync_file(path)


def _publish(tmp: Path, path: Path) -> None:
    """Rename a complete temporary file onto ``path`` (removing it if that fails) and make the rename durable."""
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to ``<path>.tmp-<pid>``, fsync it, then rename it onto ``path``. Readers of ``path`` see the old
    file or the complete new one, never a partial one; if ``write`` raises, the temporary file is removed."""
    path = Path(path)
    tmp = _partial_name(path)
    try:
        write(str(tmp))
        _fsync_file(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _publish(tmp, path)


def link_atomically(src: Path, dst: Path) -> bool:
    """Make ``dst`` a hard link to ``src`` (replacing ``dst`` in one rename). False where hard links are unsupported."""
    tmp = _partial_name(dst)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        return False
    _publish(tmp, dst)
    return True


def partial_files(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Temporary files of unfinished checkpoint writes in ``ckpt_dir`` (never resumable)."""
    d = Path(ckpt_dir)
    return sorted(d.glob(f"*.ckpt{PARTIAL_TAG}*")) if d.is_dir() else []


def remove_partial_files(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete what a killed run left half-written in ``ckpt_dir``; returns the removed paths. Call once at start, on
    global rank 0, before this run writes checkpoints."""
    removed = []
    for p in partial_files(ckpt_dir):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


class DurableCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic, fsynced writes and one-line load errors.

    Lightning's own save serialises the whole checkpoint in memory and writes it through a temporary file in the
    system temp directory; where that is another filesystem (or too small) the final move is a plain copy that a kill
    interrupts half-way. Here ``torch.save`` streams to a temporary file next to the target instead. A save of
    ``last*.ckpt`` right after a save at the same global step into the same directory (Lightning's
    ``ModelCheckpoint(save_last=True)`` does exactly that) becomes a hard link to that file.
    """

    def __init__(self) -> None:
        super().__init__()
        self._previous: tuple[Path, Any] | None = None  # (path, global_step) of the last file written

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        step = checkpoint.get("global_step")
        prev = self._previous
        if (prev is not None and path.name.startswith("last") and prev[0] != path and prev[0].parent == path.parent
                and step is not None and prev[1] == step and prev[0].is_file() and link_atomically(prev[0], path)):
            return
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))
        self._previous = (path, step)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, *args, **kwargs)
        except Exception as err:
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise CheckpointError(
                f"checkpoint {path} could not be loaded ({type(err).__name__}: {detail}). Delete it or pass "
                "trainer.ckpt_path=<another checkpoint file> (checkpoints/step-*.ckpt are earlier ones).") from err


# ------------------------------------------------------------------------------------------------ validation


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a usable checkpoint, or None. Cheap: the size and the zip index (a torch checkpoint is a zip
    file whose index is written last, so a truncated or random file has none), not the multi-GB contents."""
    p = Path(path)
    if not p.exists():
        return f"is a link to {os.readlink(p)}, which does not exist" if p.is_symlink() else "does not exist"
    if p.is_dir():  # a sharded (fsdp2) checkpoint: Lightning writes meta.pt after the shards and their index
        missing = [n for n in ("meta.pt", ".metadata") if not (p / n).is_file()]
        return f"is an incomplete sharded checkpoint (no {', '.join(missing)})" if missing else None
    size = p.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
    except Exception:
        return (f"is not a complete checkpoint ({size:,} bytes without a readable zip index: cut short by an "
                "interrupted write or a full disk, or not a checkpoint at all)")
    if not any(i.filename.rsplit("/", 1)[-1] == "data.pkl" for i in infos):
        return "is a zip file but not a PyTorch checkpoint (no data.pkl)"
    if infos and max(i.header_offset + i.compress_size for i in infos) > size:
        return f"is truncated ({size:,} bytes, shorter than its own index says)"
    return None


def _step_files(ckpt_dir: Path) -> list[Path]:
    """``step-NNNNNN.ckpt`` in ``ckpt_dir``, newest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _newer_than(a: Path, b: Path) -> bool:
    """``a`` was written after ``b`` (and is not the same file)."""
    try:
        return not a.samefile(b) and a.stat().st_mtime_ns > b.stat().st_mtime_ns
    except OSError:
        return False


def newest_checkpoint(ckpt_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """(checkpoint to resume from, a line to print or None) for ``trainer.ckpt_path=last``.

    ``last.ckpt`` when it passes :func:`checkpoint_problem` (or a good ``step-*.ckpt`` written after it: the run
    stopped between the two writes); otherwise the newest good ``step-*.ckpt``, with a line naming the bad file.
    (None, None) when the directory holds no checkpoint at all. Raises :class:`CheckpointError` when there are
    checkpoints but none is usable."""
    d = Path(ckpt_dir)
    last = d / LAST_NAME
    steps = _step_files(d)
    has_last = last.exists() or last.is_symlink()
    if not has_last and not steps:
        return None, None
    last_problem = checkpoint_problem(last) if has_last else "does not exist"
    if last_problem is None:
        for s in steps:
            if _newer_than(s, last) and checkpoint_problem(s) is None:
                return str(s), (f"trainer.ckpt_path=last: resuming from {s}, which is newer than {last} (the run "
                                "stopped between writing the two)")
        return str(last), None
    bad = [f"{last} {last_problem}"]
    for s in steps:
        problem = checkpoint_problem(s)
        if problem is None:
            skipped = "".join(f"; {b}" for b in bad[1:])
            return str(s), (f"warning: trainer.ckpt_path=last: {bad[0]}{skipped}; resuming from the newest good "
                            f"checkpoint {s} instead")
        bad.append(f"{s} {problem}")
    raise CheckpointError(f"trainer.ckpt_path=last: no usable checkpoint in {d}: {'; '.join(bad)}. Delete the broken "
                          "file(s) to start from scratch, or pass trainer.ckpt_path=<a good checkpoint file>.")


def resolve_ckpt_path(requested: str | None, ckpt_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """(checkpoint for ``Trainer.fit(ckpt_path=...)``, a line to print or None) for ``trainer.ckpt_path``:
    None (start from scratch), ``last`` (see :func:`newest_checkpoint`) or a file, which must pass
    :func:`checkpoint_problem` (else :class:`CheckpointError`; an explicit file never falls back)."""
    if requested is None or str(requested) == "":
        return None, None
    if str(requested) == "last":
        path, notice = newest_checkpoint(ckpt_dir)
        if path is None:
            notice = f"trainer.ckpt_path=last: no checkpoint in {ckpt_dir}, starting from scratch"
        return path, notice
    if not _is_local(requested):
        return str(requested), None
    problem = checkpoint_problem(requested)
    if problem is not None:
        raise CheckpointError(f"trainer.ckpt_path={requested} {problem}. Pass a good checkpoint file (trainer."
                              "ckpt_path=last picks the newest good one in output_dir) or leave trainer.ckpt_path "
                              "unset to start from scratch.")
    return str(requested), None


# ------------------------------------------------------------------------------------------------ logs


def _row_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


def _write_csv_atomically(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(rows)

    write_atomically(path, write)


class _ResumingCSVWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is kept: at the first logged step ``s`` its rows
    with step < s stay (the history before the checkpoint this run resumed from) and rows with step >= s (logged by
    the previous run after its last checkpoint, and now logged again) move to ``metrics.superseded.csv``. Whole-file
    rewrites (a new column) are atomic."""

    SUPERSEDED_FILE = "metrics.superseded.csv"

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        for tmp in Path(self.log_dir).glob(f"*.csv{PARTIAL_TAG}*"):  # a rewrite cut short by a kill
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._merge_pending = os.path.isfile(self.metrics_file_path)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._merge_pending:
            self._merge_pending = False
            self._keep_history_before(step if step is not None else 0)
        super().log_metrics(metrics_dict, step)

    def _keep_history_before(self, first_step: int) -> None:
        path = Path(self.metrics_file_path)
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = sorted(reader.fieldnames or [])
        keep = [r for r in rows if not _row_step(r) >= first_step]
        dropped = [r for r in rows if _row_step(r) >= first_step]
        if dropped:
            old = Path(self.log_dir) / self.SUPERSEDED_FILE
            previous: list[dict[str, str]] = []
            if old.is_file():
                with open(old, newline="") as f:
                    previous = list(csv.DictReader(f))
            together = previous + dropped
            _write_csv_atomically(old, sorted(set().union(*together)), together)
        if keep:
            _write_csv_atomically(path, header, keep)
            self.metrics_keys = header  # later rows are appended under the same (sorted) header
        else:
            path.unlink()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        _write_csv_atomically(Path(self.metrics_file_path), fieldnames, rows)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` keeps the steps before a resume (see :class:`_ResumingCSVWriter`). Pass
    ``flush_logs_every_n_steps=1`` so that a killed run has written every step it logged."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ResumingCSVWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingCSVWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_run_id(out: str | os.PathLike, *, resume: bool, write: bool = True) -> str:
    """The W&B run id for a run in ``out``: the stored one when resuming (so the history continues in one run), else a
    new one, which is stored in ``out/wandb/chexone-run-id.txt`` (only when ``write``: global rank 0)."""
    path = Path(out) / "wandb" / WANDB_ID_FILE
    if resume and path.is_file():
        stored = path.read_text().strip()
        if stored:
            return stored
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id format
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: Path(tmp).write_text(run_id + "\n"))
    return run_id


__all__ = ["CheckpointError", "DurableCheckpointIO", "ResumableCSVLogger", "checkpoint_problem", "newest_checkpoint",
           "partial_files", "remove_partial_files", "resolve_ckpt_path", "wandb_run_id", "write_atomically"]
