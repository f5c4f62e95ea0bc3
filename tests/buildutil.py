"""Helpers shared by the end-to-end tests: run the real CLI, load the real boards."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
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


def boot_with_declared_firmware_only(board_name: str, outdir: Path, workdir: Path) -> float:
    """Boot a built board to its ready line with QEMU finding only the firmware files its
    profile declares (fwgen.qemu.confine_firmware), as on a minimal QEMU install whatever
    this host has; the seconds to ready. QEMU stops at start on any undeclared ROM."""
    from fwgen.boot import READY_MARKER, boot_spec_for
    from fwgen.config import load_board
    from fwgen.qemu import Machine, confine_firmware

    spec = boot_spec_for(load_board(board_name), outdir, fresh_disk=True)
    spec = replace(spec, profile=confine_firmware(spec.profile, workdir / "qemu"))
    factor = float(os.environ.get("FWGEN_TIMEOUT_FACTOR", "1"))
    with Machine(spec, workdir, timeout_factor=factor) as machine:
        machine.start()
        seconds = machine.wait_for(READY_MARKER, timeout=spec.ready_timeout)
        assert machine.argv[:3] == [spec.profile.binary, "-M", spec.profile.machine]
        machine.poweroff()
    return seconds
