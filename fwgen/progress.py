"""Progress for long work (downloads, compiles, boots), on stderr.

Library code takes a `Progress` and calls `step()` / `advance()`; the CLI decides whether it
prints for a person (a terminal), plain lines (a log, CI) or nothing (`--json`, where stdout
carries the result and stderr stays quiet unless something fails).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class Progress:
    """Reports named steps and byte/item counters. Thread-safe: downloads run in threads."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True, prefix: str = "") -> None:
        """`prefix` starts every line (the board's name when several run at once, whose lines
        interleave: then counters are not redrawn in place either)."""
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.prefix = prefix
        self.tty = enabled and not prefix and self.stream.isatty()
        self._lock = threading.Lock()
        self._last = 0.0
        self._started = time.monotonic()

    def step(self, message: str) -> None:
        """A new phase of the work: one line."""
        self._emit(f"[{time.monotonic() - self._started:6.1f}s] {message}", final=True)

    def advance(self, label: str, done: int, total: int | None, unit: str = "B") -> None:
        """A counter moved. Rate-limited on a terminal, printed at 0 and at the end in logs."""
        now = time.monotonic()
        finished = total is not None and done >= total
        if self.tty:
            if not finished and now - self._last < 0.2:
                return
        elif not finished:
            return
        self._last = now
        amount = _human(done, unit) + (f"/{_human(total, unit)}" if total else "")
        self._emit(f"  {label}: {amount}", final=finished or not self.tty)

    def info(self, message: str) -> None:
        self._emit(f"  {message}", final=True)

    def warn(self, message: str) -> None:
        """Something went wrong and was mended (a damaged cache entry recomputed): one line,
        shown even when progress is off (`--json`), on stderr, because it explains lost time
        and may point at a failing disk."""
        if self.enabled:
            self._emit(f"warning: {message}", final=True)
            return
        with self._lock:
            sys.stderr.write(f"warning: {message}\n")
            sys.stderr.flush()

    def _emit(self, text: str, *, final: bool) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K" + text + ("\n" if final else ""))
            else:
                self.stream.write(self.prefix + text + "\n")
            self.stream.flush()


def _human(n: int, unit: str) -> str:
    if unit != "B":
        return f"{n} {unit}"
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or suffix == "GiB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


QUIET = Progress(enabled=False)
