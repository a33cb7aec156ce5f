"""Exact mid-epoch resume of the training stream: a resumed run sees the same samples from the next step on as a run
that was never interrupted.

Each process that reads the training stream (a DataLoader worker, or the training process with ``num_workers=0``)
keeps a :class:`StreamCursor`: how many items of its shuffled, not yet decoded stream it has consumed and how many
samples it has yielded this epoch. The collate step stamps every batch with its worker's cursor
(:class:`StampingCollate`); the training step remembers the stamp of each batch it actually trains on (prefetched
batches do not count) and checkpoints hold them for every rank (``ChexoneDataModule.state_dict``). On resume each
worker regenerates its stream from the same seed and skips the consumed items without decoding them, then yields only
what was left of its epoch. Counting items rather than samples keeps the resume exact when corrupt samples were
dropped along the way.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, NamedTuple


class StreamPosition(NamedTuple):
    """Where worker ``worker`` of a rank's training stream stood after producing a batch (a named tuple: batches
    travel through Lightning's device transfer, which rebuilds tuples but refuses frozen dataclasses)."""

    worker: int
    epoch: int
    consumed: int  # items taken from the shuffled stream (corrupt ones included)
    yielded: int  # samples yielded (what the epoch length counts)


class StreamCursor:
    """The calling process's position in its stream; ``skip_items`` were consumed before a resume."""

    def __init__(self, worker: int, epoch: int, skip_items: int = 0, already_yielded: int = 0) -> None:
        self.worker, self.epoch = worker, epoch
        self.skip_items = skip_items
        self.consumed, self.yielded = skip_items, already_yielded

    def items(self, stream: Iterable[Any]) -> Iterator[Any]:
        """The stream after the items consumed before the resume, counting each item handed on."""
        it = iter(stream)
        for _ in range(self.skip_items):
            if next(it, _END) is _END:
                return
        for item in it:
            self.consumed += 1
            yield item

    def samples(self, samples: Iterable[Any]) -> Iterator[Any]:
        for sample in samples:
            self.yielded += 1
            yield sample

    def position(self) -> StreamPosition:
        return StreamPosition(self.worker, self.epoch, self.consumed, self.yielded)


_END = object()
#: In this process, the cursor of each stream being read now, by stream key (set by the dataset when an iteration
#: starts). Keyed because one process may read two streams (GRPO's training stream and its refill stream).
_CURRENT: dict[str | None, StreamCursor] = {}


def set_current_cursor(cursor: StreamCursor | None, key: str | None = None) -> None:
    if cursor is None:
        _CURRENT.pop(key, None)
    else:
        _CURRENT[key] = cursor


class PositionedSamples(list):
    """A list of samples (GRPO's batches) that carries the stream position after its last sample."""

    stream_position: StreamPosition | None = None


class StampingCollate:
    """Wrap a collate function so that each batch carries its worker's :class:`StreamPosition` in the stream named
    ``key`` (a ``stream_position`` key of dict batches, an attribute of list batches). Picklable when the wrapped
    function is."""

    def __init__(self, collate: Callable[[list[Any]], Any], key: str | None = None) -> None:
        self.collate = collate
        self.key = key

    def __call__(self, samples: list[Any]) -> Any:
        batch = self.collate(samples)
        cursor = _CURRENT.get(self.key)
        position = cursor.position() if cursor is not None else None
        if isinstance(batch, dict):
            batch["stream_position"] = position
        elif isinstance(batch, list):
            batch = PositionedSamples(batch)
            batch.stream_position = position
        return batch


def position_of(batch: Any) -> StreamPosition | None:
    if isinstance(batch, dict):
        return batch.get("stream_position")
    return getattr(batch, "stream_position", None)


__all__ = ["PositionedSamples", "StampingCollate", "StreamCursor", "StreamPosition", "position_of",
           "set_current_cursor"]
