"""Progress for long work: a bar on a terminal; in a log file or CI log, one plain line every few seconds
(a redrawn bar written to a file is megabytes of carriage returns)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LINE_EVERY_S = 5.0


class Progress:
    """``update(n)`` as work is done; a tqdm bar when stderr is a terminal, else a line every
    ``every`` seconds and one at the end: ``[desc] 120/300 task (40%), 12.0 task/s, ETA 15s``."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", every: float = LINE_EVERY_S,
                 stream=None, leave: bool = True):  # fmt: skip
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream or sys.stderr
        self.done, self.t0 = 0, time.monotonic()
        self.last = self.t0
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=leave) if tty else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        rate = self.done / max(1e-9, self.last - self.t0)
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        of = f"/{self.total}" if self.total else ""
        eta = f", ETA {(self.total - self.done) / rate:.0f}s" if self.total and rate > 0 else ""
        print(f"[{self.desc}] {self.done}{of} {self.unit}{share}, {rate:.1f} {self.unit}/s{eta}", file=self.stream,
              flush=True)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``items`` with a ``Progress`` over them."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    with Progress(total, desc, unit) as p:
        for x in items:
            yield x
            p.update(1)
