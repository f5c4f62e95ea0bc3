"""A no-op rebuild: `fwgen build` of a board whose published build has the same inputs.

    python benchmarks/bench_noop.py [--board qemu-aarch64] [--repeat N] [--write-readme]

Builds the board once into a temporary out/ (with the package cache of FWGEN_CACHE, else the
user's), then runs `fwgen build` again `--repeat` times, each a fresh process as a user runs
it, and keeps the best. fwgen's own time is the CPU seconds (user + system) of that process:
loading the board, re-reading the feeds' indexes, resolving, hashing inputs and outputs. Wall
time adds waiting (the mirror's InRelease once its cache entry is 10 minutes old, a busy
machine). The child may write bytecode (as an installed fwgen has it), whatever
PYTHONDONTWRITEBYTECODE says. Target: under 1 s of fwgen's own time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from readme import update_readme  # noqa: E402


def run_build(board: str, out: Path, *extra: str) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the child, its --json result)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-m", "fwgen.cli", "build", "--board", board, "--out", str(out), "--json", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"fwgen build {board} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--board", default="qemu-aarch64")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write-readme", action="store_true", help="put the table in benchmarks/README.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-noop-") as tmp:
        out = Path(tmp) / "out"
        wall, cpu, _ = run_build(args.board, out)
        lines = [f"{args.board}: first build {wall:.1f} s wall, {cpu:.1f} s CPU",
                 f"{'':<16} {'wall s':>8} {'cpu s':>8}"]
        runs = []
        for _ in range(args.repeat):
            wall, cpu, result = run_build(args.board, out)
            if not result.get("up_to_date"):
                raise SystemExit(f"the rebuild of an unchanged {args.board} was not up to date")
            runs.append((cpu, wall))
        cpu, wall = min(runs)
        lines.append(f"{'no-op rebuild':<16} {wall:>8.2f} {cpu:>8.2f}"
                     + ("" if cpu < 1.0 else "  MISS: 1 s of fwgen's own time"))
        wall, cpu, _ = run_build(args.board, out, "--force")
        lines.append(f"{'--force':<16} {wall:>8.2f} {cpu:>8.2f}")
        print("\n".join(lines))
    if args.write_readme:
        update_readme("noop", lines)


if __name__ == "__main__":
    main()
