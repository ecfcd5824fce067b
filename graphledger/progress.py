"""Progress of long work on a terminal: one line rewritten in place, silent when the stream is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Call with how much is done (and of how much, when known); :meth:`close` ends the line.

    Shown as ``label [####      ]  40% 4,000/10,000 events, 2,000/s`` with a
    total, ``label: 4,000 events, 2,000/s`` without. At most ten updates a
    second are written, and the last one always is.
    """

    def __init__(self, label: str, unit: str = "events", stream: TextIO | None = None, total: int | None = None) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.shown = self.stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0
        self.done = 0
        self.written = False

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if not self.shown or (now - self.last < 0.1 and (self.total is None or done < self.total)):
            return
        self.last = now
        self._write(now)

    def _write(self, now: float) -> None:
        done, total = self.done, self.total
        rate = done / max(now - self.started, 1e-9)
        if total:
            share = done / total
            line = f"\r{self.label} [{'#' * int(share * 30):<30}] {share:4.0%} {done:,}/{total:,} {self.unit}, {rate:,.0f}/s "
        else:
            line = f"\r{self.label}: {done:,} {self.unit}, {rate:,.0f}/s "
        self.stream.write(line)
        self.stream.flush()
        self.written = True

    def close(self) -> None:
        """Write the final count (never held back) and end the line."""
        if self.shown and (self.written or self.done):
            self._write(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
