"""Each reader's task order and the blinded left/right placement of pairwise reports.

Both come from the study ``seed`` and the reader id alone (through SHA-256, so no Python hash seed or platform enters):
the same study gives a reader the same plan on any machine, and two readers get independent ones. Pairwise
placements are balanced within a reader: of n pairwise items the model's report is "Report 1" in n/2 (an odd n's
last one decided by a coin), in a shuffled order. The app stores each reader's plan on first login and keeps to the
stored one afterwards.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from chexone.reader_study.study import Study


@dataclass(frozen=True)
class Assignment:
    item_id: str
    model_first: bool | None  # pairwise: the model's report is "Report 1"; None for the other types


def reader_rng(seed: int, reader_id: str, purpose: str) -> random.Random:
    """A generator for one reader and one purpose ("order", "sides"), independent of the others."""
    digest = hashlib.sha256(f"chexone-reader-study\x00{seed}\x00{reader_id}\x00{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def item_order(study: Study, reader_id: str) -> list[str]:
    """Item ids in the reader's order: ``random`` shuffles all items, ``by_type`` keeps the types in the order they
    first appear in the study file and shuffles within each, ``fixed`` is the file's order."""
    ids = [it.id for it in study.items]
    if study.order == "fixed":
        return ids
    rng = reader_rng(study.seed, reader_id, "order")
    if study.order == "random":
        rng.shuffle(ids)
        return ids
    out: list[str] = []
    for kind in study.types:
        block = [it.id for it in study.items if it.type == kind]
        rng.shuffle(block)
        out += block
    return out


def model_first_flags(study: Study, reader_id: str) -> dict[str, bool]:
    """Pairwise item id -> whether the model's report is shown as "Report 1", balanced within the reader."""
    pairwise = [it.id for it in study.items if it.type == "pairwise"]
    rng = reader_rng(study.seed, reader_id, "sides")
    flags = [True, False] * (len(pairwise) // 2)
    if len(pairwise) % 2:
        flags.append(rng.random() < 0.5)
    rng.shuffle(flags)
    return dict(zip(pairwise, flags))


def reader_plan(study: Study, reader_id: str) -> list[Assignment]:
    flags = model_first_flags(study, reader_id)
    return [Assignment(iid, flags.get(iid)) for iid in item_order(study, reader_id)]
