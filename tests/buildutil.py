"""Helpers shared by the end-to-end tests: run the real CLI, load the real boards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_fwgen(*args: str, cache: Path, cwd: Path | None = None, env: dict | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run `python -m fwgen.cli ARGS` as a user would, with the test package cache."""
    full_env = dict(os.environ, FWGEN_CACHE=str(cache), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "fwgen.cli", *args],
        capture_output=True, text=True, cwd=cwd or REPO, env=full_env, timeout=timeout,
    )
