"""Programs fwgen starts die with it, even when fwgen is killed with SIGKILL: make and its
compilers (the BusyBox build), QEMU (`fwgen boot`). See fwgen/run.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from buildutil import REPO
from test_qemu import guest, needs_qemu, profile  # noqa: F401 (fixtures)

from fwgen.errors import RunError
from fwgen.run import run


def _alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may be slow to reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _survivors(pids: list[int], seconds: float = 5.0) -> list[int]:
    """The pids still running after `seconds`, killed now so a failing test leaves none."""
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if _alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def _start(script: str) -> tuple[subprocess.Popen[str], list[int]]:
    """Run `script` in a fresh Python; it prints the pids to watch on its first line."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"the script printed nothing (exit {child.wait()})"
    return child, [int(p) for p in line.split()]


def test_sigkill_of_fwgen_kills_the_program_and_what_it_started():
    """As make and its compilers: a shell (the program) and a sleep it started (a grandchild,
    which no parent-death signal reaches: the guard kills its process group)."""
    child, pids = _start("""
        import subprocess, time
        from fwgen.run import spawn
        proc = spawn(["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE)
        print(proc.pid, int(proc.stdout.readline()), flush=True)
        time.sleep(600)
    """)
    try:
        assert all(_alive(p) for p in pids)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        child.kill()
    assert _survivors(pids) == []


def test_run_timeout_kills_the_program_and_says_so():
    started = time.monotonic()
    with pytest.raises(RunError, match=r"sh -c 'sleep 600 & sleep 600' failed .*killed after 0.5 s"):
        run(["sh", "-c", "sleep 600 & sleep 600"], timeout=0.5)
    assert time.monotonic() - started < 5


@needs_qemu
@pytest.mark.qemu
@pytest.mark.network
def test_sigkill_of_fwgen_boot_kills_qemu(guest):  # noqa: F811 (fixture)
    kernel, initrd = guest
    child, [qemu] = _start(f"""
        from pathlib import Path
        from fwgen.config import load_qemu_profile
        from fwgen.qemu import BootSpec, Machine
        profile = load_qemu_profile("virt-aarch64", [Path({str(REPO / "qemu")!r})])
        spec = BootSpec(profile, Path({str(kernel)!r}), Path({str(initrd)!r}), append="rdinit=/init-silent")
        machine = Machine(spec, Path({str(guest[0].parent)!r}) / "sigkill")
        machine.start()
        print(machine.pid, flush=True)
        machine.wait_for("never", timeout=600, silence=600)
    """)
    try:
        assert _alive(qemu)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        child.kill()
    assert _survivors([qemu]) == []
