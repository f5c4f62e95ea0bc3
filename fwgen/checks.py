"""The checks a board declares, run against a booted guest.

Each check gives a `CheckResult`; a failure says what was expected and what came instead.
A check that cannot even run (the guest died, a port is not forwarded) is a failure too,
never an exception: `fwgen boot` reports every check.
"""

from __future__ import annotations

import http.client
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
    if kind_check is None:
        problem = f"unknown check kind {check.kind!r} (known: {', '.join(sorted(_KINDS))})"
    else:
        try:
            problem = kind_check(machine, check)
        except BootError as e:
            problem = e.message
    return CheckResult(check.name, check.kind, problem is None, time.monotonic() - started, problem or "")


def check_run(machine: Machine, check: Check) -> str | None:
    """A shell command on the console: exit status, then exact or partial output."""
    assert check.command is not None
    status, output = machine.run(check.command, timeout=check.timeout)
    if status != check.exit:
        return f"expected exit status {check.exit}, got {status}" + (f" (output: {_clip(output)!r})" if output else "")
    return _compare_text(output, check.expect, check.contains, "output")


def check_http(machine: Machine, check: Check) -> str | None:
    """GET a path through a forwarded port until status and body match or time runs out."""
    url = f"http://127.0.0.1:{machine.host_port(check.port or 80)}{check.path or '/'}"
    deadline = time.monotonic() + check.timeout * machine.timeout_factor
    while True:
        status, body, problem = _fetch(url)
        if status is not None:
            problem = _compare_http(status, body, check, url)
        if problem is None or time.monotonic() >= deadline:
            return problem
        time.sleep(HTTP_RETRY_INTERVAL)


def check_console(machine: Machine, check: Check) -> str | None:
    """Text on the console since boot (a daemon's start-up line is usually printed before
    the ready marker); waits for it otherwise. The wait raises when it does not come."""
    assert check.contains is not None
    machine.wait_for(check.contains, timeout=check.timeout, silence=check.timeout, from_start=True)
    return None


_KINDS: dict[str, Callable[[Machine, Check], str | None]] = {
    "run": check_run,
    "http": check_http,
    "console": check_console,
}


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
