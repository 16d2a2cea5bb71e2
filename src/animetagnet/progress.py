"""A small progress line for terminals (quiet when stderr is not a TTY) and the end-of-run summary."""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    def __init__(self, total: int, *, enabled: bool | None = None, stream: IO[str] | None = None, label: str = "tagging"):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total
        self.label = label
        self.done = 0
        self.failed = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, n: int = 1, failed: int = 0) -> None:
        self.done += n
        self.failed += failed
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.2 or self.done == self.total):
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            pct = 100.0 * self.done / self.total if self.total else 100.0
            self.stream.write(
                f"\r{self.label} {self.done}/{self.total} ({pct:5.1f}%) {rate:6.1f} img/s "
                f"ETA {int(eta) // 60}:{int(eta) % 60:02d} failed {self.failed}   "
            )
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def summary(self, extra: str = "") -> str:
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        text = f"{self.done} images, {self.failed} failed, {self.elapsed:.1f} s, {rate:.2f} images/s"
        return text + (f"; {extra}" if extra else "")
