"""One QEMU process: started through `run.spawn` in its own process group, the serial console
on its stdin and stdout, its stderr in a file, the spec's forwarded ports picked and held
while it may bind them.

No QEMU outlives fwgen: `kill()` ends the whole group and a `Machine` calls it on every way
out; at interpreter exit, and on SIGTERM or SIGHUP, every process still running is killed too.
"""

from __future__ import annotations

import atexit
import re
import shlex
import signal
import subprocess
import threading
import weakref
from pathlib import Path
from typing import IO

from ..errors import BootError
from ..run import kill_group, spawn
from .ports import pick_free_ports, release_ports
from .spec import BootSpec, qemu_argv

# QEMU's message when a hostfwd port is taken between our probe and its bind.
HOSTFWD_FAILED = re.compile(r"host forwarding rule|hostfwd", re.IGNORECASE)


class QemuProcess:
    """QEMU for one BootSpec, started again by each `launch()` (a reboot starts a new one)."""

    def __init__(self, spec: BootSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.stderr_log = workdir / "qemu.stderr"
        self.argv: list[str] = []
        self._ports: dict[int, int] = {}
        self._held_ports: tuple[int, ...] = ()  # reserved by pick_free_ports until QEMU is gone
        self._proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start QEMU, each forwarded guest port on a newly picked free host port."""
        self._release_ports()
        self._ports = dict(zip(self.spec.forward, pick_free_ports(len(self.spec.forward)), strict=True))
        self._held_ports = tuple(self._ports.values())
        self.argv = qemu_argv(self.spec, self._ports)
        (self.workdir / "qemu.argv").write_text(shlex.join(self.argv) + "\n")
        with open(self.stderr_log, "wb") as stderr:
            # Its own process group, killed as one; it dies with fwgen even on SIGKILL.
            self._proc = spawn(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        _LIVE.add(self)
        _install_signal_guard()

    @property
    def pid(self) -> int | None:
        """QEMU's process id once started."""
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """QEMU's exit code once it has exited, else None."""
        return self._proc.poll() if self._proc else None

    @property
    def stdin(self) -> IO[bytes]:
        """Where the guest's console input goes."""
        if self._proc is None or self._proc.stdin is None:
            raise BootError("the guest was not started")
        return self._proc.stdin

    @property
    def stdout(self) -> IO[bytes]:
        """What the guest's console prints."""
        assert self._proc is not None and self._proc.stdout is not None, "launch() first"
        return self._proc.stdout

    def host_port(self, guest_port: int) -> int:
        """The port on 127.0.0.1 that reaches `guest_port` in the guest."""
        try:
            return self._ports[guest_port]
        except KeyError:
            forwarded = ", ".join(map(str, self.spec.forward)) or "none"
            raise BootError(f"guest port {guest_port} is not forwarded (forwarded: {forwarded})") from None

    def wait(self, timeout: float) -> int | None:
        """QEMU's exit code once it exits within `timeout` seconds, else None (still running)."""
        if self._proc is None:
            raise BootError("the guest was not started")
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def exit_summary(self, when: str) -> str:
        """What ended QEMU `when` something was going on: its exit code and last stderr line."""
        try:
            code = self._proc.wait(timeout=5) if self._proc else None
        except subprocess.TimeoutExpired:
            code = None  # it closed the console but lives on; kill() will end it
        stderr = self.stderr_tail()
        return f"QEMU exited with code {code} {when}" + (f": {stderr}" if stderr else "")

    def stderr_tail(self) -> str:
        """The last line QEMU wrote on stderr, or ""."""
        try:
            lines = self.stderr_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def could_not_bind(self) -> bool:
        """True when QEMU (exited) says a forwarded host port was taken."""
        return bool(HOSTFWD_FAILED.search(self.stderr_tail()))

    def kill(self) -> None:
        """End QEMU at once (its whole process group). Safe to call any number of times."""
        proc = self._proc
        if proc is not None:
            kill_group(proc)
        if proc is not None and proc.stdin:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if proc is None or proc.poll() is not None:
            self._release_ports()
        _LIVE.discard(self)

    def _release_ports(self) -> None:
        # Once only: by then another machine may hold the same numbers. host_port() still
        # answers with the old ports, for messages.
        release_ports(self._held_ports)
        self._held_ports = ()


# -- no QEMU outlives fwgen ----------------------------------------------------------------

_LIVE: weakref.WeakSet[QemuProcess] = weakref.WeakSet()
_guard_installed = False


@atexit.register
def _kill_all() -> None:
    for process in list(_LIVE):
        process.kill()


def _install_signal_guard() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit so `with Machine` blocks and atexit run.

    Only where nobody else has claimed the signal and only from the main thread (Python
    allows handlers nowhere else). Ctrl-C needs nothing: KeyboardInterrupt unwinds already,
    and QEMU, in its own session, does not see the terminal's SIGINT.
    """
    global _guard_installed
    if _guard_installed or threading.current_thread() is not threading.main_thread():
        return
    _guard_installed = True
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _exit_on_signal)


def _exit_on_signal(signum: int, frame: object) -> None:
    _kill_all()
    raise SystemExit(128 + signum)
