"""`Machine`: a guest under QEMU, composed of its process, its console and the shell on it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import IO

from ..errors import BootError, ToolMissingError
from ..progress import QUIET, Progress
from .console import ESCAPE, Console
from .firmware import locate_firmware
from .process import QemuProcess
from .shell import Shell
from .spec import BootSpec
from .uboot import drive_bootloader

log = logging.getLogger("fwgen.qemu")

# How many times start() launches QEMU when it loses the race for a forwarded port.
LAUNCHES = 3


class Machine:
    """A running guest. Use as a context manager: QEMU is killed on the way out.

        with Machine(spec, workdir) as m:
            m.start()
            m.wait_for("fwgen: ready", timeout=120)
            status, output = m.run("uname -m")
            m.poweroff()
    """

    def __init__(
        self,
        spec: BootSpec,
        workdir: Path,
        *,
        timeout_factor: float = 1.0,
        silence: float = 60.0,
        progress: Progress = QUIET,
    ) -> None:
        """`silence`: seconds without console output, while waiting, that count as a hang."""
        self.spec = spec
        self.workdir = Path(workdir)
        self.timeout_factor = timeout_factor
        self.progress = progress
        self.console_log = self.workdir / "console.log"
        self.process = QemuProcess(spec, self.workdir)
        self.console = Console(spec.profile.name, self.console_log, timeout_factor=timeout_factor, silence=silence)
        self.shell = Shell(self.console)
        self._launches = 0

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    # -- the process -------------------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        """QEMU's command line as last started."""
        return self.process.argv

    @property
    def stderr_log(self) -> Path:
        return self.process.stderr_log

    @property
    def pid(self) -> int | None:
        """QEMU's process id once started."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """QEMU's exit code once it has exited, else None."""
        return self.process.returncode

    def host_port(self, guest_port: int) -> int:
        """The port on 127.0.0.1 that reaches `guest_port` in the guest."""
        return self.process.host_port(guest_port)

    def start(self) -> None:
        """Start QEMU. Retries with new host ports if QEMU loses the race for one."""
        if self.returncode is None and self.pid is not None:
            raise BootError(f"{self.spec.profile.name}: QEMU is already running (pid {self.pid})")
        locate_firmware(self.spec.profile)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(LAUNCHES):
            self._launch()
            if not self._lost_port_race() or attempt == LAUNCHES - 1:
                break
            log.debug("QEMU could not bind a forwarded port; retrying with new ports")
        if self.spec.bootloader_commands:
            self.drive_bootloader()

    def _launch(self) -> None:
        # A reboot starts QEMU again: its console goes on in the same log.
        self.console.open(append=self._launches > 0)
        self.shell.reset()
        self._launches += 1
        try:
            self.process.launch()
        except ToolMissingError:
            self.console.close()
            raise
        self.console.connect(self.process)
        self.progress.info(f"QEMU pid {self.pid}, console log {self.console_log}")

    def _lost_port_race(self) -> bool:
        """True when QEMU exited at once because a forwarded port was taken."""
        if not self.spec.forward:
            return False
        if not self.console.ended_silently(2.0 * self.timeout_factor):
            return False
        self.kill()
        return self.process.could_not_bind()

    def kill(self) -> None:
        """End QEMU at once (its whole process group). Safe to call any number of times."""
        self.process.kill()
        self.console.close()  # the reader has seen the end: its log can close

    def poweroff(self, timeout: float = 30) -> None:
        """Power the guest off (`poweroff -f`) and wait for QEMU to exit with code 0.

        Kills QEMU and raises BootError when it does not exit in time or exits with an error.
        """
        if self.pid is None or self.returncode is not None:
            self.kill()
            return
        self.send("\npoweroff -f\n")
        limit = timeout * self.timeout_factor
        code = self.process.wait(limit)
        self.kill()  # reaps the reader thread and closes the log
        if code is None:
            raise self.console.error(f"QEMU still running {limit:.0f} s after 'poweroff -f'; killed")
        if code != 0:
            stderr = self.process.stderr_tail()
            raise self.console.error(f"QEMU exited with code {code} after 'poweroff -f'" + (f": {stderr}" if stderr else ""))

    def wait_for_exit(self, timeout: float) -> int:
        """Wait until QEMU exits by itself: under -no-reboot a guest's `reboot`, a kernel's
        panic=-1 and a bootloader's `reset` all end it. Returns its exit code; raises BootError
        (and kills it) after `timeout` seconds times the factor."""
        limit = timeout * self.timeout_factor
        code = self.process.wait(limit)
        self.kill()  # reaps the reader thread, closes the log, releases the ports
        if code is None:
            raise self.console.error(f"QEMU still running after {limit:.0f} s, waiting for the guest to reset")
        return code

    def reboot(self) -> float:
        """A cold reboot: power off, start QEMU again on the same drives, wait for the ready
        marker. Returns the seconds to ready. Drives must be persistent for writes to survive."""
        if self.spec.ready_marker is None:
            raise BootError(f"{self.spec.profile.name}: reboot needs the boot spec's ready marker")
        self.poweroff()
        self.start()
        return self.wait_for(self.spec.ready_marker, self.spec.ready_timeout)

    # -- the console and the shell on it ---------------------------------------------------

    def wait_for(self, text_or_regex: str | re.Pattern[str], timeout: float, *, silence: float | None = None,
                 from_start: bool = False) -> float:
        """Console.wait_for: the seconds until the console shows `text_or_regex`."""
        return self.console.wait_for(text_or_regex, timeout, silence=silence, from_start=from_start)

    def console_tail(self, lines: int = 40) -> str:
        """The last `lines` lines the guest printed, terminal control sequences removed."""
        return self.console.console_tail(lines)

    def send(self, text: str) -> None:
        """Type `text` on the guest's console."""
        self.console.send(text)

    def run(self, command: str, timeout: float = 30) -> tuple[int, str]:
        """Run a shell command on the guest's console: its exit status and output (stdout and
        stderr together, the final newline removed)."""
        return self.shell.run(command, timeout)

    def attach(self, stdin: IO[bytes], stdout: IO[bytes], escape: bytes = ESCAPE) -> str:
        """Console.attach: the console handed to a person until `escape` or QEMU's exit."""
        return self.console.attach(stdin, stdout, escape)

    def drive_bootloader(self) -> float:
        """Type the boot spec's bootloader commands at its prompt (uboot.drive_bootloader)."""
        return drive_bootloader(self.console, self.spec)
