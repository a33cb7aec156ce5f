"""Test helpers for metric authors: simulate a DDP state sync between metric instances in one process.

``ranks = simulated_ranks(lambda **kw: MyMetric(**kw), world_size=2)`` returns metric instances wired (through
torchmetrics' ``dist_sync_fn`` / ``distributed_available_fn`` hooks) so that ``ranks[i].compute()`` gathers the states
of all instances exactly as ``torch.distributed.all_gather`` would, then reduces them with each state's
``dist_reduce_fx``. Feed each instance a shard of the data and compare ``compute()`` with one instance that saw
everything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["simulated_ranks"]


def _flat_states(metric: Metric) -> list[Tensor]:
    """The tensors ``Metric._sync_dist`` hands to the gather function, in its order."""
    out: list[Tensor] = []
    for attr, fn in metric._reductions.items():
        value = getattr(metric, attr)
        if isinstance(value, list):
            if fn == dim_zero_cat:
                value = [dim_zero_cat(value)] if value else [torch.tensor([], device=metric.device,
                                                                           dtype=metric.dtype)]
            out.extend(value)
        else:
            out.append(value)
    return out


def simulated_ranks(factory: Callable[..., Metric], world_size: int = 2) -> list[Metric]:
    """``world_size`` metrics from ``factory(**sync_kwargs)`` that sync with each other on ``compute()``."""
    metrics: list[Metric] = []
    calls = [0] * world_size

    def gather_for(rank: int) -> Callable[..., list[Tensor]]:
        def gather(tensor: Tensor, group: Any = None) -> list[Tensor]:
            if calls[rank] == 0:
                gather.snapshot = [_flat_states(m) for m in metrics]  # type: ignore[attr-defined]
            i = calls[rank]
            calls[rank] += 1
            mine = gather.snapshot[rank][i]  # type: ignore[attr-defined]
            if mine is not tensor and not torch.equal(mine, tensor):
                raise RuntimeError("state order differs from Metric._sync_dist's")
            if calls[rank] == len(gather.snapshot[rank]):  # type: ignore[attr-defined]
                calls[rank] = 0
            return [s[i] for s in gather.snapshot]  # type: ignore[attr-defined]

        return gather

    for r in range(world_size):
        metrics.append(factory(dist_sync_fn=gather_for(r), distributed_available_fn=lambda: True))
    return metrics
