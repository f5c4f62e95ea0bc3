"""`fwgen boot`: start a built board under QEMU, wait until it is ready, run its checks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .board import Board
from .bootstate import BootState, device_state, rotate_console_logs, state_folder
from .checks import CheckResult, run_checks
from .errors import UserError, writing
from .guest import READY_MARKER
from .outputs import BOOT_DISK, BOOTABLE_OUTPUTS, boot_spec
from .progress import QUIET, Progress
from .publish import use_build
from .qemu import BootSpec, Machine
from .rebuild import stale_files


@dataclass(frozen=True)
class BootResult:
    board: str
    ready_seconds: float
    checks: list[CheckResult]
    console_log: Path
    # Why QEMU was gone before the checks ended (a crash, a check that took the guest down);
    # "" when it ran to the end. The checks after that fail; the boot failed, not just them.
    died: str = ""

    @property
    def passed(self) -> bool:
        return not self.died and all(c.passed for c in self.checks)


def boot_spec_for(board: Board, outdir: Path, *, fresh_disk: bool = False, state: BootState | None = None) -> BootSpec:
    """The QEMU invocation for a built board, from its manifest and QEMU profile.

    A board with a disk output boots from the device's copy of its disk image in `state`
    (by default out/.state/<board>/ beside `outdir`, fwgen/bootstate.py), made on the first
    boot and kept, so what the guest writes survives into the next boot and, for the data
    partition, a rebuild; `fresh_disk` starts again from the built image.
    """
    manifest_path = outdir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{outdir}: no build found", hint=f"run 'fwgen build --board {board.name}' first")
    if board.qemu is None:
        raise UserError(f"{board.source}: board has no qemu section, it cannot be booted under QEMU")
    if stale_files(outdir, board):
        raise UserError(f"{outdir}: built from other board or overlay files than {board.source.name}'s now "
                        "(one changed since the build)",
                        f"run 'fwgen build {board.name}' first, or 'fwgen boot --build {board.name}'")
    manifest = json.loads(manifest_path.read_text())
    spec = boot_spec(board, outdir, manifest, state or BootState(state_folder(outdir), fresh_disk))
    if spec is None:
        raise UserError(f"{board.source}: outputs {', '.join(board.outputs)}: nothing QEMU can boot",
                        f"add one of {', '.join(sorted(BOOTABLE_OUTPUTS))} to outputs")
    return spec


def boot(
    board: Board,
    outdir: Path,
    *,
    timeout_factor: float = 1.0,
    progress: Progress = QUIET,
    fresh_disk: bool = False,
) -> BootResult:
    """Boot the board's build, wait for the ready line, run every check, power off.

    `fresh_disk`: forget what earlier boots wrote to the board's disk (see `boot_spec_for`).
    The build `outdir` shows when the boot starts is used throughout: a rebuild meanwhile
    publishes beside it and leaves it alone until the boot ends. The device's disk and
    console logs are in out/.state/<board>/, which no rebuild replaces."""
    with device_state(outdir, fresh=fresh_disk, progress=progress) as state, use_build(outdir) as folder:
        return _boot_build(board, folder, state, timeout_factor=timeout_factor, progress=progress)


def _boot_build(board: Board, outdir: Path, state: BootState, *, timeout_factor: float,
                progress: Progress) -> BootResult:
    with _ready_guest(board, outdir, state, timeout_factor=timeout_factor, progress=progress) as (machine, ready):
        results = run_checks(machine, board.all_checks, progress=progress)
        code = machine.returncode
        died = "" if code is None else f"QEMU exited with code {code} during the checks"
        if all(r.passed for r in results):
            machine.poweroff()
        return BootResult(board.name, ready, results, machine.console_log, died)


@contextmanager
def _ready_guest(board: Board, outdir: Path, state: BootState, *, timeout_factor: float,
                 progress: Progress) -> Iterator[tuple[Machine, float]]:
    """The built board started under QEMU, once it printed its ready line (with the seconds
    that took); QEMU is killed on the way out."""
    with writing(state.folder, f"the device copy of {board.name}'s disk"):
        spec = boot_spec_for(board, outdir, state=state)
    workdir = state.folder
    rotate_console_logs(workdir)  # once QEMU is sure to start: a refused boot keeps the old logs
    progress.step(f"booting {board.name} in {spec.profile.binary}")
    started = time.monotonic()
    with Machine(spec, workdir, timeout_factor=timeout_factor, progress=progress) as machine:
        assert board.qemu is not None
        machine.start()
        machine.wait_for(READY_MARKER, timeout=board.qemu.timeout)
        ready = time.monotonic() - started
        progress.info(f"ready after {ready:.1f} s")
        yield machine, ready


def shell(board: Board, outdir: Path, *, stdin: IO[bytes], stdout: IO[bytes], timeout_factor: float = 1.0,
          progress: Progress = QUIET, fresh_disk: bool = False) -> str:
    """Boot the board's build and give its console to a person (`fwgen boot --shell`): once the
    guest is ready, say how to reach its forwarded services, attach the console until they
    type Ctrl-], then power the guest off. Returns how the session ended."""
    assert board.qemu is not None
    with device_state(outdir, fresh=fresh_disk, progress=progress) as state, use_build(outdir) as folder, \
            _ready_guest(board, folder, state, timeout_factor=timeout_factor, progress=progress) as (machine, _):
        progress.info(f"{board.name}: {forwarded_services(machine, board.qemu.forward)}")
        progress.info("console attached: press Enter for a prompt, Ctrl-] to power off and leave")
        ended = machine.attach(stdin, stdout)
        if machine.returncode is None:
            machine.poweroff()
        return ended


KNOWN_SERVICES = {22: "ssh -p {port} root@127.0.0.1", 80: "http://127.0.0.1:{port}/"}


def forwarded_services(machine: Machine, ports: Sequence[int]) -> str:
    """How to reach each forwarded guest port from the host, ssh and http spelled out."""
    if not ports:
        return "no guest ports are forwarded"
    return ", ".join(f"guest port {port}: " + KNOWN_SERVICES.get(port, "127.0.0.1:{port}").format(
        port=machine.host_port(port)) for port in ports)


__all__ = ["BOOT_DISK", "BootResult", "BootState", "boot", "boot_spec_for", "READY_MARKER", "shell", "state_folder"]
