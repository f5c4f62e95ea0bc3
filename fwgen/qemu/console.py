"""The guest's serial console: what it printed, searched for markers, and what is typed on it.

A reader thread appends every byte QEMU prints to `console.log` and to an in-memory buffer
that `wait_for` searches; lines that mean the guest is dead (a panic, a bootloader refusing
its image, a storm of I/O errors) fail a wait at once, with the console's tail, instead of
after its full timeout. Every timeout is multiplied by `timeout_factor`.
"""

from __future__ import annotations

import codecs
import itertools
import os
import re
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from ..errors import BootError
from .process import QemuProcess

# U-Boot refusing an image it was asked to boot (boot/image-fit.c, boot/image-board.c): it
# would go on to its next boot source, so the boot has failed here.
BOOTLOADER_REFUSED = (r"Bad hash value for '[^']*' hash node", r"Bad Data Hash", r"Bad Data CRC",
                      r"Bad Header Checksum")
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
# Terminal control sequences (BusyBox's line editor asks for the cursor position with ESC[6n):
# kept in console.log, stripped from tails so printing one cannot make a terminal type back.
CONTROL_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
# The "[    7.617847] " a kernel message starts with.
KERNEL_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")
ESCAPE = b"\x1d"  # Ctrl-]: leaves an attached console, as telnet's escape does

T = TypeVar("T")


class Console:
    """The serial console of a `QemuProcess`, across its launches (one log goes on)."""

    def __init__(self, name: str, log_path: Path, *, timeout_factor: float, silence: float) -> None:
        """`name` starts every error; `silence`: seconds without output, while waiting, that
        count as a hang."""
        self.name = name
        self.log_path = log_path
        self.timeout_factor = timeout_factor
        self.silence = silence
        self._process: QemuProcess | None = None
        self._reader: threading.Thread | None = None
        self._log: IO[bytes] | None = None
        self._text = ""  # console output, carriage returns dropped
        self._cursor = 0  # where the next wait_for starts searching
        self._last_output = 0.0
        self._eof = False
        self._changed = threading.Condition()
        self._send_lock = threading.Lock()
        self._echo: IO[bytes] | None = None  # where console output also goes while a person is attached

    def open(self, *, append: bool) -> None:
        """Start afresh for a new QEMU: an empty buffer, the log opened (`append`ed to after a
        reboot, whose console goes on in the same log)."""
        self._text, self._cursor, self._eof = "", 0, False
        self._log = open(self.log_path, "ab" if append else "wb")

    def connect(self, process: QemuProcess) -> None:
        """Read what the launched `process` prints, from a thread of its own."""
        self._process = process
        self._last_output = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), name="qemu-console", daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Wait for the reader to see QEMU's end of output (QEMU is killed first), close the log."""
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        if self._log is not None:
            self._log.close()

    @property
    def exited(self) -> bool:
        """True once QEMU has exited."""
        return self._process is not None and self._process.returncode is not None

    def _read(self, stdout: IO[bytes]) -> None:
        assert self._log is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = stdout.fileno()
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

    def ended_silently(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first output; True when QEMU ended instead."""
        with self._changed:
            self._changed.wait_for(lambda: self._eof or self._text, timeout=timeout)
            return self._eof

    def console_tail(self, lines: int = 40) -> str:
        """The last `lines` lines the guest printed, terminal control sequences removed."""
        with self._changed:
            return self._tail(lines)

    def _tail(self, lines: int) -> str:
        return CONTROL_SEQUENCE.sub("", "\n".join(self._text.splitlines()[-lines:]))

    def mark(self) -> int:
        """Where the console's text ends now: an offset for `seen` and `wait_for_answer`."""
        with self._changed:
            return len(self._text)

    def seen(self, since: int = 0) -> str:
        """The text from offset `since` to the end of the last match."""
        with self._changed:
            return self._text[since:self._cursor]

    def send(self, text: str) -> None:
        """Type `text` on the guest's console."""
        if self._process is None:
            raise BootError("the guest was not started")
        stdin = self._process.stdin
        with self._send_lock:
            try:
                stdin.write(text.encode())
                stdin.flush()
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
        QEMU exiting, `silence` seconds without output (default: the console's) or `timeout`;
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
                self._raise_if_dead(what)
                now = time.monotonic()
                if now >= deadline:
                    raise self.error(f"no {what!r} on the console after {now - started:.0f} s")
                if now - self._last_output >= quiet_limit:
                    raise self.error(f"guest silent for {now - self._last_output:.0f} s while waiting for {what!r}")
                wake = min(deadline, self._last_output + quiet_limit, now + 0.5)
                self._changed.wait(timeout=max(0.01, wake - now))

    def _raise_if_dead(self, what: str) -> None:
        """Called holding the lock: fail the wait for `what` when the console says the guest died."""
        fatal = FATAL.search(self._text, self._cursor)
        if fatal:
            raise self._fatal_error(fatal, what)
        errors = list(itertools.islice(IO_ERROR.finditer(self._text, self._cursor), REPEATED_ERRORS))
        if len(errors) == REPEATED_ERRORS:
            raise self.error(f"the console repeats I/O or filesystem errors ({REPEATED_ERRORS} "
                             f"before {what!r} appeared; last: {self._line_at(errors[-1].start())})")
        if self._eof:
            raise self._exited_error(f"before {what!r} appeared")

    def wait_for_answer(self, parse: Callable[[str], tuple[T, int] | None], since: int, timeout: float,
                        command: str) -> T:
        """Wait until `parse` finds the answer to `command` in the text after offset `since`
        (it returns the answer and the offset just past it); the next wait starts there."""
        started = time.monotonic()
        deadline = started + timeout * self.timeout_factor
        with self._changed:
            while True:
                parsed = parse(self._text[since:])
                if parsed:
                    answer, end = parsed
                    self._cursor = max(self._cursor, since + end)
                    return answer
                if self._eof:
                    raise self._exited_error(f"while running {command!r}")
                now = time.monotonic()
                if self._panicked(since, now):
                    raise self.error(f"the kernel panicked while running {command!r}")
                if now >= deadline:
                    raise self.error(f"{command!r} did not finish within {now - started:.0f} s")
                self._changed.wait(timeout=min(0.5, deadline - now))

    def _panicked(self, since: int, now: float) -> bool:
        # A command may print panic text itself (`dmesg`), so only a console that went quiet
        # right after the kernel's closing panic line counts.
        quiet = now - self._last_output >= 2 * FATAL_GRACE * self.timeout_factor
        return quiet and PANIC_END in self._text[since:].rstrip().rsplit("\n", 1)[-1]

    def _fatal_error(self, fatal: re.Match[str], what: str) -> BootError:
        # Called holding the lock: read on briefly so the tail shows the panic's reason.
        grace = time.monotonic() + FATAL_GRACE * self.timeout_factor
        # A panic's story ends with PANIC_END; a bootloader's refusal is its one line.
        end = "\n" if fatal["refused"] else PANIC_END
        while not self._eof and end not in self._text[fatal.start():] and time.monotonic() < grace:
            self._changed.wait(timeout=0.1)
        line = self._line_at(fatal.start())
        if fatal["refused"]:
            return self.error(f"the bootloader refused the image before {what!r} appeared: {line}")
        return self.error(f"guest died before {what!r} appeared: {line}")

    def line_at(self, at: int) -> str:
        """The console line holding offset `at`, without its kernel timestamp."""
        with self._changed:
            return self._line_at(at)

    def _line_at(self, at: int) -> str:
        end = self._text.find("\n", at)
        line = self._text[self._text.rfind("\n", 0, at) + 1:end if end >= 0 else None]
        return KERNEL_TIME.sub("", line).strip()

    def _exited_error(self, when: str) -> BootError:
        summary = self._process.exit_summary(when) if self._process else f"QEMU exited with code None {when}"
        return self.error(summary)

    def error(self, message: str) -> BootError:
        """A BootError saying `message`, with the console's tail and where its log is."""
        return BootError(f"{self.name}: {message}", self._tail(40), hint=f"console log: {self.log_path}")

    def attach(self, stdin: IO[bytes], stdout: IO[bytes], escape: bytes = ESCAPE) -> str:
        """Hand the console to a person: what the guest prints goes to `stdout`, what they type
        (a terminal's in raw mode) to the guest, until they type `escape` (Ctrl-] as in telnet)
        or QEMU exits. Returns why it ended: "escape", "end of input" or "qemu exited"."""
        fd = stdin.fileno()
        restore = _raw_terminal(fd)
        self._echo = stdout
        try:
            while True:
                if self.exited:
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


def _raw_terminal(fd: int) -> Callable[[], None]:
    """Put a terminal in raw mode (every key goes to the guest, Ctrl-C included); returns
    what restores it. Input that is not a terminal (a pipe, a test) is left as it is."""
    if not os.isatty(fd):
        return lambda: None
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    return lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)
