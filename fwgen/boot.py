"""`fwgen boot`: start a built board under QEMU, wait until it is ready, run its checks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .board import Board
from .checks import CheckResult, run_checks
from .errors import BootError, UserError
from .progress import QUIET, Progress
from .qemu import BootSpec, Machine

READY_MARKER = "fwgen: ready"


@dataclass(frozen=True)
class BootResult:
    board: str
    ready_seconds: float
    checks: list[CheckResult]
    console_log: Path

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def boot_spec_for(board: Board, outdir: Path) -> BootSpec:
    """The QEMU invocation for a built board, from its manifest and QEMU profile."""
    manifest_path = outdir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{outdir}: no build found", hint=f"run 'fwgen build --board {board.name}' first")
    if board.qemu is None:
        raise UserError(f"{board.source}: board has no qemu section, it cannot be booted under QEMU")
    manifest = json.loads(manifest_path.read_text())
    outputs = manifest["outputs"]
    initrd = outdir / outputs["initramfs"]["file"] if "initramfs" in outputs else None
    return BootSpec(
        profile=board.qemu.profile,
        kernel=outdir / outputs["kernel"]["file"],
        initrd=initrd,
        append=f"{board.kernel.cmdline} rdinit=/init".strip(),
        memory=board.qemu.memory,
        forward=board.qemu.forward,
    )


def boot(
    board: Board,
    outdir: Path,
    *,
    timeout_factor: float = 1.0,
    progress: Progress = QUIET,
) -> BootResult:
    """Boot the board's build, wait for the ready line, run every check, power off."""
    spec = boot_spec_for(board, outdir)
    workdir = outdir / "boot"
    workdir.mkdir(exist_ok=True)
    progress.step(f"booting {board.name} in {spec.profile.binary}")
    started = time.monotonic()
    with Machine(spec, workdir, timeout_factor=timeout_factor, progress=progress) as machine:
        machine.start()
        assert board.qemu is not None
        machine.wait_for(READY_MARKER, timeout=board.qemu.timeout)
        ready = time.monotonic() - started
        progress.info(f"ready after {ready:.1f} s")
        results = run_checks(machine, board.checks, progress=progress)
        if all(r.passed for r in results):
            machine.poweroff()
        return BootResult(board.name, ready, results, machine.console_log)


__all__ = ["BootError", "BootResult", "boot", "boot_spec_for", "READY_MARKER"]
