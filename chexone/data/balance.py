"""Round robin over groups of tasks in a sample stream (``grpo.balance_tasks``).

A GRPO step scores each reward only on the prompts of the tasks that own it. Drawn at random, a generation batch of a
few prompts often holds no prompt of a rarer family (grounding, report), so that reward's per-step curve has gaps and
jumps from step to step. Reordering the stream so that its samples cycle through the groups (here: task families)
makes every ``k`` consecutive samples hold one of each of the ``k`` groups, so a batch of ``k`` or more prompts scores
every reward at every step. Within a group the stream keeps its own (shuffled) order; what changes is only how often
each group comes up: equally often, whatever its share of the data.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)

#: Items read in a row without meeting a group before that group leaves the cycle (until one of its items turns up).
DEFAULT_PATIENCE = 4096


def round_robin_by_group(stream: Iterable[Any], group_of: Callable[[Any], str], groups: Iterable[str],
                         patience: int = DEFAULT_PATIENCE) -> Iterator[Any]:
    """Yield the items of ``stream`` cycling through ``groups`` in the given order, one item of each group per turn.

    Items of the other groups are held back (in stream order) until their group's turn. A group first met in the stream
    joins the end of the cycle; a group not met in ``patience`` items read in a row leaves it (so a group absent from
    the data costs one bounded wait, not a stall) and rejoins when one of its items turns up. When the stream ends, the
    held-back items follow, still in turns. Deterministic: the output is a function of the stream's order only.
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    order: list[str] = list(dict.fromkeys(groups))
    queues: dict[str, deque] = {g: deque() for g in order}
    source = iter(stream)
    exhausted = False

    def read_one() -> bool:
        nonlocal exhausted
        try:
            item = next(source)
        except StopIteration:
            exhausted = True
            return False
        group = group_of(item)
        if group not in queues:
            queues[group] = deque()
        if group not in order:
            order.append(group)  # new, or back after leaving the cycle
        queues[group].append(item)
        return True

    turn = 0
    while True:
        if not order:
            if exhausted or not read_one():
                return
            continue
        turn %= len(order)
        group = order[turn]
        dry = 0
        while not queues[group] and not exhausted and dry < patience:
            read_one()
            dry += 1
        if queues[group]:
            yield queues[group].popleft()
            turn += 1
            continue
        # no item of this group within patience (or the stream ended): it leaves the cycle
        if not exhausted:
            log.info("balance: no sample of group %r in %d samples read in a row; it leaves the round robin until "
                     "one turns up", group, patience)
        order.pop(turn)
