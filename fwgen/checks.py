"""The checks a board declares, run against a booted guest.

Each check gives a `CheckResult`; a failure says what was expected and what came instead.
A check that cannot even run (the guest died, a port is not forwarded) is a failure too,
never an exception: `fwgen boot` reports every check.
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .board import Check
from .errors import BootError
from .progress import QUIET, Progress
from .qemu import Machine

# Seconds between HTTP attempts while a daemon is still coming up.
HTTP_RETRY_INTERVAL = 0.5


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    passed: bool
    seconds: float
    detail: str = ""  # on failure: expected vs got
    console_tail: str = ""  # on failure: the console's last lines when it failed


def run_checks(machine: Machine, checks: Sequence[Check], *, progress: Progress = QUIET) -> list[CheckResult]:
    """Run every check in order against a ready guest."""
    results = []
    for check in checks:
        progress.step(f"check {check.name}")  # the caller prints the verdicts
        results.append(run_check(machine, check))
    return results


def run_check(machine: Machine, check: Check) -> CheckResult:
    """Run one check; its failures (and a dead guest) become a failed result."""
    started = time.monotonic()
    kind_check = _KINDS.get(check.kind)
    problem: str | None
    if kind_check is None:
        problem = f"unknown check kind {check.kind!r} (known: {', '.join(sorted(_KINDS))})"
    elif machine.returncode is not None:  # nothing answers any more: no check waits for it
        problem = f"not run: QEMU had exited with code {machine.returncode}"
    else:
        try:
            problem = kind_check(machine, check)
        except BootError as e:
            problem = e.message
    tail = machine.console_tail() if problem is not None else ""
    return CheckResult(check.name, check.kind, problem is None, time.monotonic() - started, problem or "", tail)


def check_run(machine: Machine, check: Check) -> str | None:
    """A shell command on the console: exit status, then exact or partial output."""
    assert check.command is not None
    status, output = machine.run(check.command, timeout=check.timeout)
    if status != check.exit:
        return f"expected exit status {check.exit}, got {status}" + (f" (output: {_clip(output)!r})" if output else "")
    return _compare_text(output, check.expect, check.contains, "output")


def check_http(machine: Machine, check: Check) -> str | None:
    """GET a path through a forwarded port until the server answers, then compare status and
    body. No answer yet (refused, reset: the daemon is still starting) is retried until the
    timeout; an answer is final, so a wrong status or body fails at once."""
    url = f"http://127.0.0.1:{machine.host_port(check.port or 80)}{check.path or '/'}"
    deadline = time.monotonic() + check.timeout * machine.timeout_factor
    while True:
        status, body, problem = _fetch(url)
        if status is not None:
            return _compare_http(status, body, check, url)
        if time.monotonic() >= deadline or machine.returncode is not None:
            return problem
        time.sleep(HTTP_RETRY_INTERVAL)


def check_console(machine: Machine, check: Check) -> str | None:
    """Text on the console since boot (a daemon's start-up line is usually printed before
    the ready marker); waits for it otherwise. The wait raises when it does not come."""
    assert check.contains is not None
    machine.wait_for(check.contains, timeout=check.timeout, silence=check.timeout, from_start=True)
    return None


def check_tcp(machine: Machine, check: Check) -> str | None:
    """Connect through a forwarded port until the server's first line starts with the banner
    (or, without one, until a connection is accepted and not closed at once). A first line is
    an answer: a wrong banner fails at once."""
    assert check.port is not None
    address = ("127.0.0.1", machine.host_port(check.port))
    deadline = time.monotonic() + check.timeout * machine.timeout_factor
    while True:
        line, problem = _read_banner(address)
        if problem is None:
            if check.banner is not None and not line.startswith(check.banner):
                return f"port {check.port}: expected a banner starting {check.banner!r}, got {_clip(line)!r}"
            return None
        if time.monotonic() >= deadline or machine.returncode is not None:
            return problem
        time.sleep(HTTP_RETRY_INTERVAL)


def check_service(machine: Machine, check: Check) -> str | None:
    """Kill a supervised service's process; the supervisor must run a new one in time.
    `fwgen-service pid` (base overlay) reads the pid runsv or its shell fallback keeps."""
    name = check.service
    status, old = machine.run(f"fwgen-service pid {name}", timeout=10)
    if status != 0 or not old.strip().isdigit():
        return f"service {name} is not running (fwgen-service pid: {_clip(old) or 'nothing'})"
    old = old.strip()
    limit = max(1, round(check.timeout * machine.timeout_factor * 10))
    script = (f"kill {old}; i=0; while [ $i -lt {limit} ]; do "
              f"new=$(fwgen-service pid {name}) && [ \"$new\" != {old} ] && echo \"$new\" && exit 0; "
              "i=$((i + 1)); sleep 0.1; done; exit 1")
    status, new = machine.run(f"sh -c '{script}'", timeout=check.timeout + 10)
    if status != 0:
        return f"service {name}: killed pid {old}, no new process within {check.timeout:.0f} s"
    return None


def check_persist(machine: Machine, check: Check) -> str | None:
    """Write a fresh token, reboot, and read it back: the data partition keeps changes."""
    token = f"fwgen-persist-{time.time_ns()}"
    status, output = machine.run(f"mkdir -p \"$(dirname {check.path})\" && echo {token} > {check.path} && sync",
                                 timeout=check.timeout)
    if status != 0:
        return f"cannot write {check.path}: {_clip(output)!r}"
    machine.reboot()
    status, output = machine.run(f"cat {check.path}", timeout=check.timeout)
    return _compare_text(output, token, None, f"{check.path} after the reboot") if status == 0 else \
        f"{check.path} is gone after the reboot ({_clip(output)!r})"


_KINDS: dict[str, Callable[[Machine, Check], str | None]] = {
    "run": check_run,
    "http": check_http,
    "console": check_console,
    "tcp": check_tcp,
    "service": check_service,
    "persist": check_persist,
}


def _read_banner(address: tuple[str, int]) -> tuple[str, str | None]:
    """(first line, None), or ("", why) when no server answered on the forwarded port."""
    try:
        with socket.create_connection(address, timeout=5) as sock:
            sock.settimeout(5)
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return "", f"connect to 127.0.0.1:{address[1]}: {e}"
    if not data:
        return "", f"127.0.0.1:{address[1]}: connection closed without a banner"
    return data.split(b"\n", 1)[0].decode(errors="replace").rstrip("\r"), None


def _fetch(url: str) -> tuple[int | None, str, str | None]:
    """(status, body, None) for any HTTP answer, (None, "", why) when there is none."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode(errors="replace"), None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        return None, "", f"GET {url}: no answer ({reason})"


def _compare_http(status: int, body: str, check: Check, url: str) -> str | None:
    if status != check.status:
        return f"GET {url}: expected status {check.status}, got {status}"
    problem = _compare_text(body, check.expect, check.contains, "body")
    return f"GET {url}: {problem}" if problem else None


def _compare_text(text: str, expect: str | None, contains: str | None, what: str) -> str | None:
    if expect is not None and text.strip() != expect.strip():
        return f"expected {what} {expect.strip()!r}, got {_clip(text.strip())!r}"
    if contains is not None and contains not in text:
        return f"expected {what} containing {contains!r}, got {_clip(text)!r}"
    return None


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
