"""What every worker measures the same way: step wall-clock times, peak memory, and the result record."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


class StepClock:
    """Wall-clock end of every optimizer step. A step's time runs from the end of the previous step to its own end,
    so it includes everything between steps (data loading, collation, logging) in both frameworks; the first step
    starts at ``begin`` (when it begins)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.first_begin: float | None = None
        self.ends: list[float] = []

    def _now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def begin(self) -> None:
        if self.first_begin is None:
            self.first_begin = self._now()

    def end(self) -> None:
        self.ends.append(self._now())

    def step_seconds(self, warmup: int) -> list[float]:
        """Durations of the steps after the first ``warmup`` ones."""
        if self.first_begin is None:
            return []
        starts = [self.first_begin, *self.ends[:-1]]
        return [end - start for start, end in zip(starts, self.ends)][warmup:]


def peak_memory(device: str) -> tuple[int, str]:
    """(bytes, what was measured): the CUDA allocator's high-water mark on a GPU, else the process's peak RSS."""
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024), "peak RSS (getrusage)"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} torch threads"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "transformers", "trl", "chexone", "lightning", "accelerate"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


@dataclass
class RunResult:
    """One framework's run of one workload, as the worker writes it (JSON)."""

    framework: str                          # chexone | trl
    variant: str = ""                       # e.g. "packed" for chexone SFT with padding-free packing
    step_seconds: list[float] = field(default_factory=list)      # timed steps only
    tokens_per_step: list[int] = field(default_factory=list)     # completion tokens (GRPO) / non-pad tokens (SFT)
    completion_lengths: list[int] = field(default_factory=list)  # GRPO: every completion of the timed steps
    prompt_fingerprint: str = ""            # hash of the prompt token sequences fed to the model
    prompt_lengths: list[int] = field(default_factory=list)      # GRPO prompts / SFT samples, non-pad tokens
    image_tokens: list[int] = field(default_factory=list)        # per prompt / sample
    split: dict[str, float] = field(default_factory=dict)        # mean seconds per timed step, by phase
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    device_name: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_split(per_step: list[dict[str, float]], warmup: int) -> dict[str, float]:
    """Mean seconds per phase over the timed steps (phases a step did not report count as 0)."""
    timed = per_step[warmup:]
    names = sorted({k for step in timed for k in step})
    return {k: sum(step.get(k, 0.0) for step in timed) / len(timed) for k in names} if timed else {}
