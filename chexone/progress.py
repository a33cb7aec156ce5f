"""Progress reporting that suits where the output goes.

On a terminal: a tqdm bar. Anywhere else (a log file, CI, ``nohup``, a SLURM job): one plain line per update, at most
every ``CHEXONE_PROGRESS_INTERVAL`` seconds (default 10) plus the first and the last, so logs stay readable and
grep-able instead of holding one carriage-return-separated line of thousands of bar redraws.
``CHEXONE_PROGRESS=bar|lines|off`` forces a mode.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

MODES = ("bar", "lines", "off")


def progress_mode(stream: TextIO | None = None) -> str:
    """``bar`` on a terminal, ``lines`` otherwise, unless ``CHEXONE_PROGRESS`` says which."""
    forced = os.environ.get("CHEXONE_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    stream = stream or sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def line_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CHEXONE_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


def format_duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(n: float, total: float | None, unit: str, elapsed: float, postfix: str = "") -> str:
    """``12/800 steps (2%) | 0:31 elapsed, 0.4 steps/s, ~33:05 left | loss 3.1`` (parts without data left out)."""
    rate = n / elapsed if elapsed > 0 else 0.0
    head = f"{n:g}/{total:g} {unit}" if total else f"{n:g} {unit}"
    if total:
        head += f" ({100.0 * n / total:.0f}%)"
    timing = f"{format_duration(elapsed)} elapsed"
    if rate > 0:
        timing += f", {rate:.3g} {unit}/s"
        if total and n < total:
            timing += f", ~{format_duration((total - n) / rate)} left"
    return " | ".join(p for p in (head, timing, postfix) if p)


class LineProgress:
    """The tqdm calls chexone uses (``update``, ``set_postfix``, ``set_postfix_str``, ``close``, iteration), printed as
    one line per update, rate-limited."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", initial: float = 0, file: TextIO | None = None, interval: float | None = None,
                 enabled: bool = True):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit.strip() or "it"
        self.n = self.initial = initial
        self.file = file or sys.stderr
        self.interval = line_interval() if interval is None else interval
        self.enabled = enabled
        self.postfix = ""
        self.start = time.perf_counter()
        self._last_print: float | None = None
        self._printed_n: float | None = None
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k} {_fmt(v)}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def reset(self, total: float | None = None) -> None:
        self.total, self.n, self.start = total, 0, time.perf_counter()

    def refresh(self) -> None:
        self._print()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self._last_print is None or now - self._last_print >= self.interval or (self.total and self.n >= self.total):
            self._print(now)

    def _print(self, now: float | None = None) -> None:
        if not self.enabled or self._printed_n == self.n:
            return
        now = now or time.perf_counter()
        self._last_print, self._printed_n = now, self.n
        text = describe(self.n - self.initial, (self.total - self.initial) if self.total else None, self.unit,
                        now - self.start, self.postfix)
        if self.initial:
            text += f" (resumed at {self.initial:g})"
        print(f"{self.desc}: {text}" if self.desc else text, file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def progress(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             initial: float = 0, file: TextIO | None = None, disable: bool = False) -> Any:
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere (nothing printed when ``disable`` or
    ``CHEXONE_PROGRESS=off``)."""
    file = file or sys.stderr
    mode = "off" if disable else progress_mode(file)
    if mode == "bar":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file,
                        enabled=mode == "lines")


def quiet_library_bars() -> None:
    """Off a terminal, switch off the progress bars transformers and huggingface_hub draw while saving and loading
    weights (each a carriage-return line of redraws in a log); on a terminal they stay."""
    if progress_mode() == "bar":
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


__all__ = ["LineProgress", "describe", "format_duration", "progress", "progress_mode", "quiet_library_bars"]
