"""Boot a guest under QEMU and drive its serial console.

The harness follows Buildroot's `emulator.py`: QEMU runs with the guest's serial console on
its stdio (plain pipes, no wrapper library); a reader thread appends every byte to
`console.log` and to an in-memory buffer that `wait_for` searches for sentinel markers.
Commands run through the guest's shell on that console and report their exit status back
through it between begin/end markers. Every timeout is multiplied by `timeout_factor`.

A guest never outlives its `Machine`: QEMU runs in its own process group, which `kill()`
ends on every way out (context-manager exit, exceptions, Ctrl-C, SIGTERM, interpreter exit).
"""

from __future__ import annotations

import atexit
import codecs
import itertools
import logging
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import termios
import threading
import time
import tty
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from .board import QemuProfile
from .errors import BootError, ToolMissingError, UserError
from .progress import QUIET, Progress
from .run import PACKAGE_OF, kill_group, run, spawn

log = logging.getLogger("fwgen.qemu")

# U-Boot refusing an image it was asked to boot (boot/image-fit.c, boot/image-board.c): it
# would go on to its next boot source, so the boot has failed here.
BOOTLOADER_REFUSED = (r"Bad hash value for '[^']*' hash node", r"Bad Data Hash", r"Bad Data CRC",
                      r"Bad Header Checksum")
# What U-Boot prints when a command typed at its prompt failed (cmd/net.c, net/tftp.c,
# cmd/bootm.c, common/command.c): the next command would act on nothing.
BOOTLOADER_FAILED = re.compile(r"Unknown command '[^']*'|TFTP error|Retry count exceeded|"
                               r"Wrong Image Format|Bad Magic Number|ERROR: can't get kernel image|"
                               r"## Error|Error: inflate\(\) returned|No ethernet found|"
                               r"Could not get PHY|DHCP client could not|Not enough space")
# U-Boot's autoboot countdown: any key stops it at the prompt.
AUTOBOOT = "Hit any key to stop autoboot"
# Console lines that mean the guest is dead. Checked while waiting for a marker so a broken
# boot fails in seconds, not after the full timeout.
FATAL = re.compile(r"Kernel panic|Unable to mount root|Attempted to kill init|"
                   rf"(?P<refused>{'|'.join(BOOTLOADER_REFUSED)})")
# Kernel messages about a failing disk or a damaged filesystem. One may pass (a probe, a
# retried read); a console that keeps printing them (a corrupt squashfs read again by every
# respawned shell) will not reach its marker, so after REPEATED_ERRORS of them the wait
# fails at once instead of after the full timeout.
IO_ERROR = re.compile(r"SQUASHFS error|blk_update_request: I/O error|I/O error, dev \w+|Buffer I/O error|"
                      r"EXT[234]-fs error|FAT-fs \([^)]*\): error|UBIFS error|jffs2: .*(?:error|CRC failed)")
REPEATED_ERRORS = 10
# The last line the kernel prints about a panic; the tail is complete once it is in.
PANIC_END = "end Kernel panic"
# How long to keep reading after a fatal line, so the tail carries the whole story.
FATAL_GRACE = 1.0
# The guest shell's start-up settings: no echo of what we type, no prompts, and kernel
# messages on the console only for emergencies (a panic still shows).
SHELL_PRELUDE = "stty -echo 2>/dev/null; PS1= PS2=; dmesg -n 1 2>/dev/null"
# Terminal control sequences (BusyBox's line editor asks for the cursor position with ESC[6n):
# kept in console.log, stripped from tails so printing one cannot make a terminal type back.
CONTROL_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
# The "[    7.617847] " a kernel message starts with.
KERNEL_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")
# QEMU's message when a hostfwd port is taken between our probe and its bind.
HOSTFWD_FAILED = re.compile(r"host forwarding rule|hostfwd", re.IGNORECASE)


@dataclass(frozen=True)
class BootSpec:
    """Everything one QEMU run needs besides the profile's machine facts."""

    profile: QemuProfile
    kernel: Path | None  # None: `bios` (a bootloader) loads the kernel itself
    initrd: Path | None = None
    dtb: Path | None = None
    append: str = ""
    memory: int | None = None
    drives: tuple[Path, ...] = ()  # raw disk images, attached with the profile's disk device
    persistent: bool = False  # the guest writes into `drives` (else snapshot=on keeps them as they are)
    sd_card: Path | None = None  # raspi0 style (-drive if=sd)
    forward: tuple[int, ...] = ()  # guest TCP ports -> free ports on 127.0.0.1
    extra_args: tuple[str, ...] = ()
    ready_marker: str | None = None  # the line that says the guest is up (what reboot() waits for)
    ready_timeout: float = 120.0
    bios: Path | None = None  # a bootloader started instead of -kernel (U-Boot's u-boot.bin)
    bootloader_prompt: str | None = None  # the bootloader's prompt, where bootloader_commands are typed
    bootloader_commands: tuple[str, ...] = ()  # typed at that prompt, one at a time, as a test lab does
    tftp: Path | None = None  # a folder QEMU's user network serves by TFTP


def qemu_argv(spec: BootSpec, host_ports: Mapping[int, int] | None = None) -> list[str]:
    """The QEMU command line for `spec`, serial console on stdio.

    `host_ports` maps each forwarded guest TCP port to its port on 127.0.0.1. Disk images are
    attached with `snapshot=on` unless `spec.persistent`: the guest may write, the image files
    stay as built.
    """
    profile = spec.profile
    argv = [profile.binary, "-M", profile.machine]
    if profile.cpu:
        argv += ["-cpu", profile.cpu]
    argv += ["-m", str(spec.memory or profile.memory)]
    argv += ["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"]
    argv += _boot_args(spec)
    argv += _drive_args(spec)
    argv += _network_args(spec, host_ports or {})
    return argv + list(profile.args) + list(spec.extra_args)


def _boot_args(spec: BootSpec) -> list[str]:
    """-bios for a bootloader (which finds kernel, initramfs and command line on its own), or
    QEMU's own loader."""
    if spec.bios is not None:
        return ["-bios", str(spec.bios)]
    if spec.kernel is None:
        raise UserError(f"QEMU profile {spec.profile.name}: nothing to boot (no kernel, no bios)")
    args = ["-kernel", str(spec.kernel)]
    if spec.initrd:
        args += ["-initrd", str(spec.initrd)]
    if spec.dtb:
        args += ["-dtb", str(spec.dtb)]
    return args + ["-append", kernel_cmdline(spec)]


def kernel_cmdline(spec: BootSpec) -> str:
    """The boot arguments, with the profile's console added unless the caller chose one."""
    if "console=" in spec.append:
        return spec.append
    return f"console={spec.profile.console} {spec.append}".strip()


def _drive_args(spec: BootSpec) -> list[str]:
    args: list[str] = []
    if spec.drives and not spec.profile.disk:
        raise UserError(f"QEMU profile {spec.profile.name} has no disk device for {spec.drives[0]}")
    snapshot = "" if spec.persistent else ",snapshot=on"
    for index, drive in enumerate(spec.drives):
        args += ["-drive", f"file={_drive_path(drive)},if=none,id=d{index},format=raw{snapshot}",
                 "-device", f"{spec.profile.disk},drive=d{index}"]
    if spec.sd_card:
        args += ["-drive", f"file={_drive_path(spec.sd_card)},if=sd,format=raw{snapshot}"]
    return args


def _drive_path(path: Path) -> str:
    # QEMU's option parser splits on ',': a literal comma is written twice.
    return str(path).replace(",", ",,")


def _network_args(spec: BootSpec, host_ports: Mapping[int, int]) -> list[str]:
    nic = spec.profile.nic
    if not nic:
        if spec.forward:
            raise UserError(f"QEMU profile {spec.profile.name} has no network device to forward ports through")
        # Without any network option some machines add a default NIC (malta: pcnet, whose
        # option ROM efi-pcnet.rom a minimal QEMU install lacks).
        return ["-nic", "none"]
    tftp = f",tftp={_drive_path(spec.tftp)}" if spec.tftp else ""
    netdev = "user,id=n0" + tftp + "".join(
        f",hostfwd=tcp:127.0.0.1:{host_ports[port]}-:{port}" for port in spec.forward
    )
    return ["-netdev", netdev, "-device", f"{nic},netdev=n0"]


# Which Debian package ships QEMU's own ROM files, by name prefix (for the "missing" hint).
FIRMWARE_PACKAGES = (("vgabios-", "seabios"), ("bios", "seabios"), ("efi-", "ipxe-qemu"), ("pxe-", "ipxe-qemu"))


def firmware_search_path(binary: str, args: tuple[str, ...] = ()) -> list[Path]:
    """The folders `binary` searches for firmware, in order, with the `-L` folders in `args`
    first (what `-L help` prints)."""
    given = [arg for option, arg in zip(args, args[1:], strict=False) if option == "-L"]
    listed = run([binary, *(part for folder in given for part in ("-L", folder)), "-L", "help"]).stdout.decode()
    return [Path(line) for line in listed.splitlines() if line.strip()]


def locate_firmware(profile: QemuProfile) -> dict[str, Path]:
    """Where QEMU finds each firmware file `profile` declares.

    Raises ToolMissingError naming the files it lacks and the packages that ship them, before
    QEMU would stop with `failed to find romfile`."""
    if not profile.firmware:
        return {}
    folders = firmware_search_path(profile.binary, profile.args)
    found: dict[str, Path] = {}
    for name in profile.firmware:
        hits = [folder / name for folder in folders if (folder / name).is_file()]
        if hits:
            found[name] = hits[0]
    missing = [name for name in profile.firmware if name not in found]
    if missing:
        packages = sorted({next((pkg for prefix, pkg in FIRMWARE_PACKAGES if name.startswith(prefix)),
                                "the package that ships it") for name in missing})
        raise ToolMissingError(
            f"{profile.source or profile.name}: firmware {', '.join(missing)} not found in "
            f"{profile.binary}'s search path ({', '.join(map(str, folders))})",
            f"install {', '.join(packages)}")
    return found


def confine_firmware(profile: QemuProfile, folder: Path) -> QemuProfile:
    """`profile` changed so that its QEMU finds the firmware the profile declares and nothing
    else: what a minimal QEMU install (no seabios, no ipxe-qemu) offers a profile that
    declares what it needs.

    QEMU searches the `-L` folders, then folders relative to its own executable (Debian's
    `<bin>/../share/qemu`, `../share/seabios`, `../lib/ipxe/qemu`). A copy of the binary in
    `folder/bin` (a copy: QEMU finds itself through /proc/self/exe, which resolves symlinks)
    has none of those, and `-L folder/firmware` holds copies of the declared files only. A
    ROM the profile uses without declaring it then stops QEMU at start, whatever firmware
    the host has installed. Raises BootError when this QEMU searches fixed folders that exist.
    """
    found = locate_firmware(profile)
    binary = shutil.which(profile.binary)
    if binary is None:
        raise ToolMissingError(f"{profile.binary} not found", f"install {PACKAGE_OF.get(profile.binary, profile.binary)}")
    bindir, firmware_dir = folder / "bin", folder / "firmware"
    bindir.mkdir(parents=True, exist_ok=True)
    firmware_dir.mkdir(parents=True, exist_ok=True)
    private = bindir / Path(binary).name
    shutil.copy2(binary, private)
    for name, path in found.items():
        shutil.copyfile(path, firmware_dir / name)
    confined = replace(profile, binary=str(private), args=("-L", str(firmware_dir), *_without_search_folders(profile.args)))
    leaks = [p for p in firmware_search_path(confined.binary, confined.args) if p != firmware_dir and p.exists()]
    if leaks:
        raise BootError(f"{binary} searches {', '.join(map(str, leaks))} wherever it runs from: "
                        "its firmware cannot be confined to what the profile declares")
    return confined


def _without_search_folders(args: tuple[str, ...]) -> tuple[str, ...]:
    kept: list[str] = []
    for arg in args:
        if kept and kept[-1] == "-L":
            kept.pop()
        else:
            kept.append(arg)
    return tuple(kept)


# Ports this process has handed to its machines and not released yet. A port is free again
# for the kernel the moment its probe socket closes, and it may hand it out again before QEMU
# binds it: parallel boots in one fwgen (`fwgen boot --all -j N`) must not share a port.
_RESERVED_PORTS: set[int] = set()
_PORTS_LOCK = threading.Lock()
# How many ports one call may probe before giving up on finding `count` unreserved ones.
PORT_PROBES = 256


def pick_free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago and that no other
    machine of this process holds; reserved until `release_ports`.

    The kernel picks them (bind to port 0); all sockets stay open until every port is chosen
    so the same port is not handed out twice. Another program may still take one before QEMU
    binds it: `Machine` retries with new ports when QEMU cannot bind.
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    with _PORTS_LOCK:
        try:
            while len(ports) < count:
                if len(sockets) >= PORT_PROBES:
                    raise BootError(f"no {count} free TCP ports on 127.0.0.1 after {PORT_PROBES} tries")
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                if port not in _RESERVED_PORTS and port not in ports:
                    ports.append(port)
        finally:
            for s in sockets:
                s.close()
        _RESERVED_PORTS.update(ports)
    return ports


def release_ports(ports: Iterable[int]) -> None:
    """Give ports from `pick_free_ports` back once their QEMU has exited."""
    with _PORTS_LOCK:
        _RESERVED_PORTS.difference_update(ports)


@dataclass(frozen=True)
class Reply:
    """What one console command printed and how it ended."""

    status: int
    output: str


def command_line(command: str, token: str, *, isolated: bool = True) -> str:
    """The shell line that runs `command` between markers built from `token`.

    The markers are printed with `printf '%s%s'` from two halves, so the line itself (which
    the tty may echo back) never contains a joined marker. An `isolated` command runs in a
    subshell with stdin closed: it cannot swallow what we type next, and `exit 3` or `cd`
    do not touch the console shell. The shell's own set-up runs without isolation.
    """
    begin, end = _markers(token)
    body = f"eval {shlex.quote(command)}"
    if isolated:
        body = f"( {body} ) </dev/null"
    return (
        f"printf '\\n%s%s\\n' '{begin[:3]}' '{begin[3:]}'; "
        f"{body} 2>&1; "
        f"printf '\\n%s%s %d\\n' '{end[:3]}' '{end[3:]}' $?"
    )


def parse_reply(text: str, token: str) -> tuple[Reply, int] | None:
    """Find the reply to the command sent with `token` in console text.

    Returns the reply and the offset just past it, or None while the end marker has not
    arrived. Text outside the markers (echo, kernel messages, prompts) is ignored. Trailing
    newlines are dropped from the output, as `$(...)` does in a shell.
    """
    begin, end = _markers(token)
    start = text.find(begin + "\n")
    if start < 0:
        return None
    body_start = start + len(begin) + 1
    found = re.compile(r"\n?" + re.escape(end) + r" (\d+)\n").search(text, body_start)
    if not found:
        return None
    output = text[body_start:found.start()].rstrip("\n")
    return Reply(int(found.group(1)), output), found.end()


def _markers(token: str) -> tuple[str, str]:
    return f"@@@FWGEN-BEGIN-{token}@@@", f"@@@FWGEN-END-{token}@@@"


ESCAPE = b"\x1d"  # Ctrl-]: leaves an attached console, as telnet's escape does


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
        self.silence = silence
        self.progress = progress
        self.console_log = self.workdir / "console.log"
        self.stderr_log = self.workdir / "qemu.stderr"
        self.argv: list[str] = []
        self._ports: dict[int, int] = {}
        self._held_ports: tuple[int, ...] = ()  # reserved by pick_free_ports until QEMU is gone
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._log: IO[bytes] | None = None
        self._text = ""  # console output, carriage returns dropped
        self._cursor = 0  # where the next wait_for starts searching
        self._last_output = 0.0
        self._eof = False
        self._changed = threading.Condition()
        self._tokens = 0
        self._shell_ready = False
        self._send_lock = threading.Lock()
        self._launches = 0
        self._echo: IO[bytes] | None = None  # where console output also goes while a person is attached

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def start(self) -> None:
        """Start QEMU. Retries with new host ports if QEMU loses the race for one."""
        if self.returncode is None and self._proc is not None:
            raise BootError(f"{self.spec.profile.name}: QEMU is already running (pid {self._proc.pid})")
        locate_firmware(self.spec.profile)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self._release_ports()
            self._ports = dict(zip(self.spec.forward, pick_free_ports(len(self.spec.forward)), strict=True))
            self._held_ports = tuple(self._ports.values())
            self._launch()
            if not self._lost_port_race() or attempt == 2:
                break
            log.debug("QEMU could not bind a forwarded port; retrying with new ports")
        if self.spec.bootloader_commands:
            self.drive_bootloader()

    def _launch(self) -> None:
        self.argv = qemu_argv(self.spec, self._ports)
        (self.workdir / "qemu.argv").write_text(shlex.join(self.argv) + "\n")
        self._text, self._cursor, self._eof, self._shell_ready = "", 0, False, False
        # A reboot starts QEMU again: its console goes on in the same log.
        self._log = open(self.console_log, "ab" if self._launches else "wb")
        self._launches += 1
        with open(self.stderr_log, "wb") as stderr:
            try:
                # Its own process group, killed as one; it dies with fwgen even on SIGKILL.
                self._proc = spawn(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
            except ToolMissingError:
                self._log.close()
                raise
        _LIVE.add(self)
        _install_signal_guard()
        self._last_output = time.monotonic()
        self._reader = threading.Thread(target=self._read_console, name="qemu-console", daemon=True)
        self._reader.start()
        self.progress.info(f"QEMU pid {self._proc.pid}, console log {self.console_log}")

    def drive_bootloader(self) -> float:
        """Type the boot spec's bootloader commands at its prompt, as a test lab drives a
        board's U-Boot over its serial console: stop the autoboot countdown if there is one,
        then one command per prompt, the last (bootm) without waiting for a prompt again.
        Returns the seconds to the first prompt. A command U-Boot answers with a failure
        fails the boot at once, with U-Boot's line."""
        spec = self.spec
        assert spec.bootloader_prompt is not None
        prompt = re.compile(re.escape(AUTOBOOT) + "|" + re.escape(spec.bootloader_prompt))
        started = time.monotonic()
        self.wait_for(prompt, 60)
        if self._text.endswith(AUTOBOOT, 0, self._cursor):
            self.send("\n")
            self.wait_for(spec.bootloader_prompt, 30)
        first = time.monotonic() - started
        for number, command in enumerate(spec.bootloader_commands):
            with self._changed:
                since = len(self._text)
            self.send(command + "\n")
            if number == len(spec.bootloader_commands) - 1:
                return first
            self.wait_for(spec.bootloader_prompt, 120)
            with self._changed:
                answer = self._text[since:self._cursor]
            failed = BOOTLOADER_FAILED.search(answer)
            if failed:
                raise self._error(f"the bootloader failed at {command!r}: {self._line_at(since + failed.start())}")
        return first

    def _lost_port_race(self) -> bool:
        """True when QEMU exited at once because a forwarded port was taken."""
        if not self.spec.forward:
            return False
        deadline = time.monotonic() + 2.0 * self.timeout_factor
        with self._changed:
            self._changed.wait_for(lambda: self._eof or self._text, timeout=deadline - time.monotonic())
            if not self._eof:
                return False
        self.kill()
        return bool(HOSTFWD_FAILED.search(self._stderr_tail()))

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
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        if self._log is not None:
            self._log.close()
        if proc is None or proc.poll() is not None:
            self._release_ports()
        _LIVE.discard(self)

    def _release_ports(self) -> None:
        # Once only: by then another machine may hold the same numbers. host_port() still
        # answers with the old ports, for messages.
        release_ports(self._held_ports)
        self._held_ports = ()

    @property
    def pid(self) -> int | None:
        """QEMU's process id once started."""
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """QEMU's exit code once it has exited, else None."""
        return self._proc.poll() if self._proc else None

    def host_port(self, guest_port: int) -> int:
        """The port on 127.0.0.1 that reaches `guest_port` in the guest."""
        try:
            return self._ports[guest_port]
        except KeyError:
            forwarded = ", ".join(map(str, self.spec.forward)) or "none"
            raise BootError(f"guest port {guest_port} is not forwarded (forwarded: {forwarded})") from None

    # -- the console -----------------------------------------------------------------------

    def _read_console(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None and self._log is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self._proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if chunk:
                self._log.write(chunk)
                self._log.flush()
                echo = self._echo
                if echo is not None:
                    echo.write(chunk)
                    echo.flush()
            with self._changed:
                if not chunk:
                    self._eof = True
                    self._changed.notify_all()
                    return
                self._text += decoder.decode(chunk).replace("\r", "")
                self._last_output = time.monotonic()
                self._changed.notify_all()

    def console_tail(self, lines: int = 40) -> str:
        """The last `lines` lines the guest printed, terminal control sequences removed."""
        with self._changed:
            return self._tail(lines)

    def _tail(self, lines: int) -> str:
        return CONTROL_SEQUENCE.sub("", "\n".join(self._text.splitlines()[-lines:]))

    def _stderr_tail(self) -> str:
        try:
            lines = self.stderr_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def send(self, text: str) -> None:
        """Type `text` on the guest's console."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise BootError("the guest was not started")
        with self._send_lock:
            try:
                proc.stdin.write(text.encode())
                proc.stdin.flush()
            except (BrokenPipeError, ValueError) as e:
                raise self._exited_error("while typing on the console") from e

    def wait_for(
        self,
        text_or_regex: str | re.Pattern[str],
        timeout: float,
        *,
        silence: float | None = None,
        from_start: bool = False,
    ) -> float:
        """Wait until the console shows `text_or_regex` after the previous match (or anywhere
        since boot with `from_start`).

        Returns the seconds waited. Raises BootError, with the console tail, on a kernel panic,
        QEMU exiting, `silence` seconds without output (default: the machine's) or `timeout`;
        all three times are multiplied by the timeout factor.
        """
        pattern = text_or_regex if isinstance(text_or_regex, re.Pattern) else re.compile(re.escape(text_or_regex))
        what = pattern.pattern if isinstance(text_or_regex, re.Pattern) else text_or_regex
        started = time.monotonic()
        deadline = started + timeout * self.timeout_factor
        quiet_limit = (self.silence if silence is None else silence) * self.timeout_factor
        with self._changed:
            # Fatal lines are looked for only in text no earlier wait has seen: what a command
            # printed (`dmesg`) was its output, not news of a dead kernel.
            search_from = 0 if from_start else self._cursor
            while True:
                found = pattern.search(self._text, search_from)
                if found:
                    self._cursor = max(self._cursor, found.end())
                    return time.monotonic() - started
                fatal = FATAL.search(self._text, self._cursor)
                if fatal:
                    raise self._fatal_error(fatal, what)
                errors = list(itertools.islice(IO_ERROR.finditer(self._text, self._cursor), REPEATED_ERRORS))
                if len(errors) == REPEATED_ERRORS:
                    raise self._error(f"the console repeats I/O or filesystem errors ({REPEATED_ERRORS} "
                                      f"before {what!r} appeared; last: {self._line_at(errors[-1].start())})")
                if self._eof:
                    raise self._exited_error(f"before {what!r} appeared")
                now = time.monotonic()
                if now >= deadline:
                    raise self._error(f"no {what!r} on the console after {now - started:.0f} s")
                if now - self._last_output >= quiet_limit:
                    raise self._error(f"guest silent for {now - self._last_output:.0f} s while waiting for {what!r}")
                wake = min(deadline, self._last_output + quiet_limit, now + 0.5)
                self._changed.wait(timeout=max(0.01, wake - now))

    def _fatal_error(self, fatal: re.Match[str], what: str) -> BootError:
        # Called holding the lock: read on briefly so the tail shows the panic's reason.
        grace = time.monotonic() + FATAL_GRACE * self.timeout_factor
        # A panic's story ends with PANIC_END; a bootloader's refusal is its one line.
        end = "\n" if fatal["refused"] else PANIC_END
        while not self._eof and end not in self._text[fatal.start():] and time.monotonic() < grace:
            self._changed.wait(timeout=0.1)
        line = self._line_at(fatal.start())
        if fatal["refused"]:
            return self._error(f"the bootloader refused the image before {what!r} appeared: {line}")
        return self._error(f"guest died before {what!r} appeared: {line}")

    def _line_at(self, at: int) -> str:
        """The console line holding offset `at`, without its kernel timestamp."""
        end = self._text.find("\n", at)
        line = self._text[self._text.rfind("\n", 0, at) + 1:end if end >= 0 else None]
        return KERNEL_TIME.sub("", line).strip()

    def _exited_error(self, when: str) -> BootError:
        try:
            code = self._proc.wait(timeout=5) if self._proc else None
        except subprocess.TimeoutExpired:
            code = None  # it closed the console but lives on; kill() will end it
        stderr = self._stderr_tail()
        return self._error(f"QEMU exited with code {code} {when}" + (f": {stderr}" if stderr else ""))

    def _error(self, message: str) -> BootError:
        tail = self._tail(40)
        return BootError(f"{self.spec.profile.name}: {message}", tail, hint=f"console log: {self.console_log}")

    # -- commands --------------------------------------------------------------------------

    def run(self, command: str, timeout: float = 30) -> tuple[int, str]:
        """Run a shell command on the guest's console: its exit status and output.

        Output is stdout and stderr together, with the final newline removed.
        """
        self._ensure_shell()
        reply = self._exchange(command, timeout)
        return reply.status, reply.output

    def _ensure_shell(self) -> None:
        """Make sure a shell is listening, then quiet it (no echo, no prompts, no printk).

        The console shell may start a moment after the ready marker, and a tty can drop what
        was typed while it changes modes, so this probes a few times before giving up.
        """
        if self._shell_ready:
            return
        attempts = 10
        for attempt in range(attempts):
            try:
                self._exchange(SHELL_PRELUDE, timeout=3, isolated=False)
                break
            except BootError:
                if self.returncode is not None or attempt == attempts - 1:
                    raise
        self._shell_ready = True

    def _exchange(self, command: str, timeout: float, *, isolated: bool = True) -> Reply:
        self._tokens += 1
        token = f"{os.getpid()}-{self._tokens}"
        with self._changed:
            since = len(self._text)
        self.send(command_line(command, token, isolated=isolated) + "\n")
        started = time.monotonic()
        deadline = started + timeout * self.timeout_factor
        with self._changed:
            while True:
                parsed = parse_reply(self._text[since:], token)
                if parsed:
                    reply, end = parsed
                    self._cursor = max(self._cursor, since + end)
                    return reply
                if self._eof:
                    raise self._exited_error(f"while running {command!r}")
                now = time.monotonic()
                if self._panicked(since, now):
                    raise self._error(f"the kernel panicked while running {command!r}")
                if now >= deadline:
                    raise self._error(f"{command!r} did not finish within {now - started:.0f} s")
                self._changed.wait(timeout=min(0.5, deadline - now))

    def _panicked(self, since: int, now: float) -> bool:
        # A command may print panic text itself (`dmesg`), so only a console that went quiet
        # right after the kernel's closing panic line counts.
        quiet = now - self._last_output >= 2 * FATAL_GRACE * self.timeout_factor
        return quiet and PANIC_END in self._text[since:].rstrip().rsplit("\n", 1)[-1]

    def poweroff(self, timeout: float = 30) -> None:
        """Power the guest off (`poweroff -f`) and wait for QEMU to exit with code 0.

        Kills QEMU and raises BootError when it does not exit in time or exits with an error.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self.kill()
            return
        self.send("\npoweroff -f\n")
        limit = timeout * self.timeout_factor
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._error(f"QEMU still running {limit:.0f} s after 'poweroff -f'; killed") from None
        self.kill()  # reaps the reader thread and closes the log
        if code != 0:
            raise self._error(f"QEMU exited with code {code} after 'poweroff -f'" + (
                f": {self._stderr_tail()}" if self._stderr_tail() else ""))

    def attach(self, stdin: IO[bytes], stdout: IO[bytes], escape: bytes = ESCAPE) -> str:
        """Hand the console to a person: what the guest prints goes to `stdout`, what they type
        (a terminal's in raw mode) to the guest, until they type `escape` (Ctrl-] as in telnet)
        or QEMU exits. Returns why it ended: "escape", "end of input" or "qemu exited"."""
        fd = stdin.fileno()
        restore = _raw_terminal(fd)
        self._echo = stdout
        try:
            while True:
                if self.returncode is not None:
                    return "qemu exited"
                readable, _, _ = select.select([fd], [], [], 0.2)
                if not readable:
                    continue
                typed = os.read(fd, 1024)
                if not typed:
                    return "end of input"
                before, found, _ = typed.partition(escape)
                if before:
                    self.send(before.decode(errors="replace"))
                if found:
                    return "escape"
        finally:
            self._echo = None
            restore()

    def wait_for_exit(self, timeout: float) -> int:
        """Wait until QEMU exits by itself: under -no-reboot a guest's `reboot`, a kernel's
        panic=-1 and a bootloader's `reset` all end it. Returns its exit code; raises BootError
        (and kills it) after `timeout` seconds times the factor."""
        proc = self._proc
        if proc is None:
            raise BootError("the guest was not started")
        limit = timeout * self.timeout_factor
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._error(f"QEMU still running after {limit:.0f} s, waiting for the guest to reset") from None
        self.kill()  # reaps the reader thread, closes the log, releases the ports
        return code

    def reboot(self) -> float:
        """A cold reboot: power off, start QEMU again on the same drives, wait for the ready
        marker. Returns the seconds to ready. Drives must be persistent for writes to survive."""
        if self.spec.ready_marker is None:
            raise BootError(f"{self.spec.profile.name}: reboot needs the boot spec's ready marker")
        self.poweroff()
        self.start()
        return self.wait_for(self.spec.ready_marker, self.spec.ready_timeout)


def _raw_terminal(fd: int) -> Callable[[], None]:
    """Put a terminal in raw mode (every key goes to the guest, Ctrl-C included); returns
    what restores it. Input that is not a terminal (a pipe, a test) is left as it is."""
    if not os.isatty(fd):
        return lambda: None
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    return lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# -- no QEMU outlives fwgen ----------------------------------------------------------------

_LIVE: weakref.WeakSet[Machine] = weakref.WeakSet()
_guard_installed = False


@atexit.register
def _kill_all() -> None:
    for machine in list(_LIVE):
        machine.kill()


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


__all__ = ["BootSpec", "Machine", "Reply", "command_line", "confine_firmware", "firmware_search_path",
           "locate_firmware", "parse_reply", "pick_free_ports", "qemu_argv", "release_ports"]
