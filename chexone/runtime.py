"""How many CPU cores a process may use, and how they are split between torch threads and DataLoader workers.

Torch starts one intra-op thread per core in every process by default. Several processes on one machine (DDP ranks on
CPU, or a main process beside its DataLoader workers) then fight over the same cores, which was measured to slow a
2-core machine down tenfold. So each training process uses its share of the cores (``cores // local processes``),
DataLoader workers run one thread each (torch does that inside workers), and ``data.num_workers=-1`` (auto) starts
at most as many workers as the process's share of cores leaves free. An explicit ``OMP_NUM_THREADS`` is respected.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: Auto mode never starts more workers than this per process: decoding PNGs is cheap next to a training step.
MAX_AUTO_WORKERS = 8


def available_cores() -> int:
    """Cores this process may run on (CPU affinity / cgroup-pinned sets included where the OS reports them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def cores_per_process(local_processes: int) -> int:
    return max(1, available_cores() // max(1, local_processes))


def resolve_num_workers(requested: int, local_processes: int = 1) -> int:
    """``requested`` DataLoader workers (``-1`` = auto: one core is left for the training process, at most 8)."""
    share = cores_per_process(local_processes)
    if requested < 0:
        return min(MAX_AUTO_WORKERS, share - 1)
    if requested > share:
        log.warning("data.num_workers=%d but this process has %d core(s): the workers will compete with training for "
                    "the CPU (data.num_workers=-1 picks %d)", requested, share, min(MAX_AUTO_WORKERS, share - 1))
    return requested


#: What a forkserver imports once, so that each worker forked from it starts without importing them again.
WORKER_PRELOAD = ("chexone.data.shards", "chexone.data.collate", "chexone.data.stream_position", "chexone.tasks")


def worker_start_method(requested: str = "auto") -> str:
    """The start method for DataLoader workers (``data.worker_start_method``).

    Workers are not forked from the training process by default: by the time the loader starts, that process runs
    threads (a progress bar's monitor, torch.distributed's store and gloo loops, queue feeders), and a child forked
    while one of them holds an interpreter lock waits for it forever (seen as a rare hang of a resumed 2-rank run on
    Python 3.11). ``forkserver`` forks each worker from a small single-threaded server process instead. It re-imports
    the main module in every worker, which is safe for ``python -m ...`` and for guarded scripts; ``auto`` falls back
    to ``fork`` for a script that would re-run its top level in every worker."""
    if requested != "auto":
        return requested
    import sys

    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        return "forkserver"  # python -m <module>, python -c, an interactive session: nothing is re-run
    try:
        source = open(main.__file__, encoding="utf-8", errors="replace").read()
    except OSError:
        return "fork"
    return "forkserver" if "__name__" in source and "__main__" in source else "fork"


def start_worker_server(method: str, num_workers: int) -> None:
    """Start the forkserver now (it imports :data:`WORKER_PRELOAD` in its own process, in parallel with the model
    load), so that the first batch does not wait for those imports. A no-op for other start methods."""
    if num_workers <= 0 or method != "forkserver":
        return
    import multiprocessing
    import multiprocessing.forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_PRELOAD))
    multiprocessing.forkserver.ensure_running()


class WorkerInit:
    """``worker_init_fn`` of the training loader: makes each worker exit when the training process is gone, then
    applies Lightning's per-worker seeding when ``seed_everything(workers=True)`` asked for it (a loader with its own
    ``worker_init_fn`` does not get Lightning's).

    A worker started by a forkserver is the server's child, not the training process's, so torch's own check (has
    the parent changed?) never fires: after a ``kill -9`` of the training process its workers, and the server they
    keep alive, would stay forever, holding shard files, memory and the terminal's pipes."""

    def __init__(self, rank: int = 0) -> None:
        self.trainer_pid = os.getpid()
        self.rank = rank
        self.seed_workers = os.environ.get("PL_SEED_WORKERS") == "1"

    def __call__(self, worker_id: int) -> None:
        exit_with(self.trainer_pid)
        if self.seed_workers:
            from lightning.fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id, rank=self.rank)


def exit_with(pid: int, poll_s: float = 1.0) -> None:
    """End this process as soon as process ``pid`` has ended (a daemon thread waits for it)."""
    import threading

    def wait() -> None:
        try:
            import select

            fd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has ended
            select.select([fd], [], [])
        except (AttributeError, OSError):
            import time

            while True:  # elsewhere: poll (signal 0 only checks that the process exists)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=wait, name=f"exit-with-{pid}", daemon=True).start()


def worker_options(num_workers: int, method: str = "auto", prefetch_factor: int = 4, rank: int = 0) -> dict:
    """DataLoader keyword arguments for ``num_workers`` persistent workers started with ``method``."""
    if num_workers <= 0:
        return {"num_workers": 0}
    import multiprocessing

    return {"num_workers": num_workers, "persistent_workers": True, "prefetch_factor": prefetch_factor,
            "multiprocessing_context": multiprocessing.get_context(worker_start_method(method)),
            "worker_init_fn": WorkerInit(rank)}


def configure_threads(local_processes: int = 1) -> int:
    """Give this process's torch its share of the cores (unless ``OMP_NUM_THREADS`` is set); returns the count."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(cores_per_process(local_processes))
    return torch.get_num_threads()


__all__ = ["WorkerInit", "available_cores", "configure_threads", "cores_per_process", "exit_with", "resolve_num_workers",
           "start_worker_server", "worker_options", "worker_start_method"]
