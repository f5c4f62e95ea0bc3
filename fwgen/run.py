"""The one helper through which fwgen runs every external program.

Every program starts in its own process group, and that group dies with fwgen, however fwgen
ends (an exception, Ctrl-C, SIGTERM, even SIGKILL): the program gets a parent-death signal,
and a small guard process kills the whole group (make's compilers, QEMU) once fwgen is gone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from .errors import RunError, ToolMissingError

log = logging.getLogger("fwgen.run")

# Which Debian package brings a program, for the "not found" hint.
PACKAGE_OF = {
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-system-arm": "qemu-system-arm",
    "qemu-system-mips": "qemu-system-mips",
    "qemu-system-mipsel": "qemu-system-mips",
    "qemu-system-mips64el": "qemu-system-mips",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "cpio": "cpio",
    "fsck.vfat": "dosfstools",
    "mdir": "mtools",
    "mcopy": "mtools",
}

# prctl(2): PR_SET_PDEATHSIG asks the kernel to signal a process when its parent dies.
PR_SET_PDEATHSIG = 1

# The guard: reads "+PGID" / "-PGID" lines from fwgen on stdin; at end of file (fwgen has
# exited, whatever killed it) it kills every process group still registered. It ignores the
# terminal's signals, so a Ctrl-C reaches fwgen and its programs but not the guard.
GUARD_SCRIPT = """
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    pgid = int(line[1:])
    (groups.add if line[0] == "+" else groups.discard)(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A fixed environment for child programs: C.UTF-8 locale, SOURCE_DATE_EPOCH passed on."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "SOURCE_DATE_EPOCH")}
    env["LANG"] = env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


class _Guard:
    """The guard process of this fwgen process (started on first use, again after a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._pipe: IO[bytes] | None = None
        self._watched: set[int] = set()

    def watch(self, pgid: int) -> None:
        self._watched.add(pgid)
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        if pgid in self._watched:  # once: the id may already belong to a newer program
            self._watched.discard(pgid)
            self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._start()
            assert self._pipe is not None
            try:
                self._pipe.write(line.encode())
                self._pipe.flush()
            except OSError:  # the guard is gone (someone killed it): start another next time
                self._pid = -1

    def _start(self) -> None:
        guard = subprocess.Popen(
            [sys.executable, "-c", GUARD_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )
        self._pipe, self._pid = guard.stdin, os.getpid()


_GUARD = _Guard()


def _die_with_parent(parent: int) -> Callable[[], None]:
    """The child's pre-exec step: SIGKILL when fwgen dies (it may already have)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # fwgen died before the signal was armed
            os._exit(1)

    return arm


def spawn(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
          cwd: str | os.PathLike[str] | None = None, **streams: Any) -> subprocess.Popen[bytes]:
    """Start a program in its own process group that dies with fwgen (see the module's doc).

    `streams` are Popen's stdin, stdout and stderr. End it with `kill_group(proc)`.
    The parent-death signal fires when the *thread* that started the program ends: start
    long-lived programs (QEMU) from a thread that outlives them.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("+ %s", shlex.join(args))
    try:
        proc = subprocess.Popen(args, env=tool_env(env), cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent(os.getpid()), **streams)
    except FileNotFoundError as e:
        raise ToolMissingError(
            f"{args[0]} not found", f"install {PACKAGE_OF.get(args[0], args[0])}"
        ) from e
    _GUARD.watch(proc.pid)
    return proc


def kill_group(proc: subprocess.Popen[bytes]) -> int:
    """End a program started by `spawn` and everything it started; returns its exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    code = proc.wait()
    release(proc)
    return code


def release(proc: subprocess.Popen[bytes]) -> None:
    """Tell the guard a finished program's group needs no killing (its id may be reused)."""
    _GUARD.forget(proc.pid)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program to completion, capturing its output.

    Raises ToolMissingError when the program is not installed, and RunError (with the tail of
    stderr) when it fails and `check` is set or when it outlives `timeout` (then it is killed).
    """
    proc = spawn(argv, env=env, cwd=cwd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    args = [os.fspath(a) for a in argv]
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise RunError(args, -signal.SIGKILL, f"killed after {timeout} s (timeout)") from None
    except BaseException:
        kill_group(proc)
        raise
    release(proc)
    if check and proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RunError(args, proc.returncode, " | ".join(tail))
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
