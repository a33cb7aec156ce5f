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


def configure_threads(local_processes: int = 1) -> int:
    """Give this process's torch its share of the cores (unless ``OMP_NUM_THREADS`` is set); returns the count."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(cores_per_process(local_processes))
    return torch.get_num_threads()


__all__ = ["available_cores", "configure_threads", "cores_per_process", "resolve_num_workers"]
