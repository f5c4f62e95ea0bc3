"""The tables of benchmarks/README.md, each written by the script that measures it.

A table sits between `<!-- NAME -->` and `<!-- /NAME -->`; `update_readme(NAME, lines)`
replaces what is between them (as a code block) and leaves the rest of the file alone. A
table that is not there yet is appended.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def update_readme(name: str, lines: list[str]) -> None:
    """Put `lines` into README.md as table NAME, with when and where they were measured."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    stamp = (f"measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
             f"({platform.machine()}), load average {os.getloadavg()[0]:.1f}")
    block = "\n".join([start, "```", *lines, "```", stamp, end])
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(text)


def verdict(size_ratio: float, time_ratio: float, *, size: float = 1.03, time: float = 1.5) -> str:
    """"" when both ratios meet the image writers' targets, else what each misses."""
    misses = [f"MISS {name}" for name, ratio, bound in (("size", size_ratio, size), ("time", time_ratio, time))
              if ratio > bound]
    return "  " + ", ".join(misses) if misses else ""
