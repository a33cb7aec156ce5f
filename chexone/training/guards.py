"""Nothing non-finite reaches the weights: skip optimizer steps whose loss or gradient norm is NaN/inf, stop after too
many in a row, and refuse to write a checkpoint or export from non-finite weights.

A skipped step clears the gradients (``p.grad = None``) before the optimizer runs, so AdamW leaves both the weights
and its moment estimates untouched; the step number and the learning-rate schedule still advance, so a skipped step
is visible in the logs at its own step (``train/skipped_steps``) and data order is unchanged. In distributed runs the
verdict is agreed over all ranks (one scalar all-reduce), so every rank skips the same steps.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced NaN/inf where it must not (loss, gradients or weights); the message says what to do."""


def gradient_norm(parameters: Iterable[nn.Parameter]) -> float:
    """Global L2 norm of the gradients (NaN/inf when any gradient is); sharded (DTensor) gradients included."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor whose full value is the global norm
        norm = norm.full_tensor()
    return float(norm)


def nonfinite_parameters(model: nn.Module, limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) parameters holding NaN/inf (local shards under FSDP2)."""
    bad = []
    for name, p in model.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        if not bool(torch.isfinite(local).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


class StepGuard:
    """Counts skipped optimizer steps and stops the run after ``max_consecutive`` skips in a row."""

    def __init__(self, max_consecutive: int, any_rank: Callable[[bool], bool] = lambda flag: flag):
        self.max_consecutive = int(max_consecutive)
        self.any_rank = any_rank
        self.skipped = 0
        self.consecutive = 0

    def check(self, parameters: list[nn.Parameter], *, loss: float, step: int) -> tuple[bool, float]:
        """(step may update the weights, pre-clipping gradient norm). On a skip the gradients are cleared."""
        norm = gradient_norm(parameters)
        bad = self.any_rank(not (math.isfinite(loss) and math.isfinite(norm)))
        if not bad:
            self.consecutive = 0
            return True, norm
        for p in parameters:
            p.grad = None
        self.skipped += 1
        self.consecutive += 1
        log.warning("step %d: loss %s, gradient norm %s: optimizer step skipped (weights unchanged; %d skipped so far, "
                    "%d in a row)", step, loss, norm, self.skipped, self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} optimizer steps in a row were skipped because the loss or the gradient norm was "
                f"not finite (last at step {step}: loss {loss}, gradient norm {norm}). The weights were never updated "
                "from them and the last checkpoint is intact. Lower optim.lr, check the data and rewards, or raise "
                "trainer.max_consecutive_skipped_steps.")
        return False, norm

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))


def ensure_finite_weights(model: nn.Module, what: str, any_rank: Callable[[bool], bool] = lambda flag: flag) -> None:
    """Raise :class:`NonFiniteError` instead of writing ``what`` (a checkpoint, an export) from NaN/inf weights."""
    bad = nonfinite_parameters(model)
    if any_rank(bool(bad)):
        names = ", ".join(bad) or "(on another rank)"
        raise NonFiniteError(f"refusing to write {what}: the weights hold NaN/inf (e.g. {names}). Earlier checkpoints "
                             "are left as they were; resume from the last good one with trainer.ckpt_path=last and a "
                             "lower optim.lr.")


__all__ = ["NonFiniteError", "StepGuard", "ensure_finite_weights", "gradient_norm", "nonfinite_parameters"]
