"""The tables of benchmarks/README.md, each written by the script that measures it.

A table sits between `<!-- NAME -->` and `<!-- /NAME -->`; `update_readme(NAME, lines)`
replaces what is between them (as a code block) and leaves the rest of the file alone. A
table that is not there yet is appended.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Callable
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


# -- the image writers' comparison tables (bench_initramfs, bench_squashfs) --------------------
Run = tuple[float, float]  # (wall seconds, CPU seconds) of one run


def tree_size(src: Path) -> tuple[int, int, int]:
    """(paths, regular files, their bytes) under `src`, links not followed."""
    paths = files = total = 0
    for root, dirs, names in os.walk(src):
        paths += len(dirs) + len(names)
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                files += 1
                total += os.path.getsize(path)
    return paths, files, total


def best_runs(repeat: int, ours: Callable[[], Run], theirs: Callable[[], Run]) -> tuple[Run, Run]:
    """Each tool's best of `repeat` runs, the tools alternated so a busy machine slows both alike."""
    runs_ours, runs_theirs = [], []
    for _ in range(repeat):
        runs_ours.append(ours())
        runs_theirs.append(theirs())
    return min(runs_ours), min(runs_theirs)


def header(width: int, tool: str) -> str:
    """The table's first line: fwgen against `tool` (a short name: cpio, mksq)."""
    return (f"{'tree':<{width}} {'comp':<5} {'fwgen B':>11} {tool + ' B':>11} {'size':>6} "
            f"{'fwgen s':>8} {tool + ' s':>8} {'time':>6} {'cpu':>6}")


def row(label: str, width: int, compression: str, sizes: tuple[int, int], ours: Run, theirs: Run) -> str:
    """One comparison: both sizes and times, their ratios, and the targets each ratio misses."""
    (s_ours, s_theirs), (t_ours, c_ours), (t_theirs, c_theirs) = sizes, ours, theirs
    return (f"{label:<{width}} {compression:<5} {s_ours:>11,} {s_theirs:>11,} {s_ours / s_theirs:>6.3f} "
            f"{t_ours:>8.2f} {t_theirs:>8.2f} {t_ours / t_theirs:>6.2f} {c_ours / c_theirs:>6.2f}"
            f"{verdict(s_ours / s_theirs, t_ours / t_theirs)}")
