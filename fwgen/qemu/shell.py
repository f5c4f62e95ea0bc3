"""Commands run through the guest's shell on its serial console.

Each command runs between begin and end markers built from a fresh token and reports its
exit status after the end marker, so its output is found in console text that interleaves
kernel messages, echo and prompts.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from ..errors import BootError
from .console import Console

# The guest shell's start-up settings: no echo of what we type, no prompts, and kernel
# messages on the console only for emergencies (a panic still shows).
SHELL_PRELUDE = "stty -echo 2>/dev/null; PS1= PS2=; dmesg -n 1 2>/dev/null"


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


class Shell:
    """The shell on a console: quieted once, then one command at a time."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._tokens = 0
        self._ready = False

    def reset(self) -> None:
        """A new QEMU (a reboot) brings a new shell, to be quieted again."""
        self._ready = False

    def run(self, command: str, timeout: float = 30) -> tuple[int, str]:
        """Run a shell command on the guest's console: its exit status and output.

        Output is stdout and stderr together, with the final newline removed.
        """
        self._ensure_ready()
        reply = self._exchange(command, timeout)
        return reply.status, reply.output

    def _ensure_ready(self) -> None:
        """Make sure a shell is listening, then quiet it (no echo, no prompts, no printk).

        The console shell may start a moment after the ready marker, and a tty can drop what
        was typed while it changes modes, so this probes a few times before giving up.
        """
        if self._ready:
            return
        attempts = 10
        for attempt in range(attempts):
            try:
                self._exchange(SHELL_PRELUDE, timeout=3, isolated=False)
                break
            except BootError:
                if self.console.exited or attempt == attempts - 1:
                    raise
        self._ready = True

    def _exchange(self, command: str, timeout: float, *, isolated: bool = True) -> Reply:
        self._tokens += 1
        token = f"{os.getpid()}-{self._tokens}"
        since = self.console.mark()
        self.console.send(command_line(command, token, isolated=isolated) + "\n")
        return self.console.wait_for_answer(lambda text: parse_reply(text, token), since, timeout, command)
