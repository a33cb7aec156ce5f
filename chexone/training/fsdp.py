"""Calling parts of an FSDP2-sharded model directly (the rollout engines do: vision tower, embeddings, decoder with a
KV cache), which FSDP2 supports only after its root has run once and with the root's own parameters gathered."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from chexone.training.core import is_fsdp2


@contextmanager
def direct_submodule_calls(model: nn.Module) -> Iterator[None]:
    """Inside, ``model``'s submodules may be called directly, also under FSDP2 sharding.

    FSDP2 decides which module is the root on the first forward it sees, so the first time a one-token forward runs
    through the root; then the root's own parameters (embeddings, patch embedding, merger, final norm, LM head) are
    gathered for the duration (each sharded block still gathers its own in its forward) and sharded again after.
    Without FSDP2 this does nothing.
    """
    if not is_fsdp2(model):
        yield
        return
    if not getattr(model, "_chexone_root_ran", False):
        device = next(model.parameters()).device
        with torch.no_grad():
            token = torch.zeros(1, 1, dtype=torch.long, device=device)
            model(input_ids=token, attention_mask=torch.ones_like(token), use_cache=False)
        model._chexone_root_ran = True
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
