"""Many boards in one call: build or boot each, several at once, and record what happened.

Every board gets an `Outcome` whatever happened to the others (a broken board file, a failed
build, a guest that never came up, a bug): one board's failure never stops the rest. Boards
run in threads: a boot waits on QEMU, a build mostly on compilers, compression and the disk,
and the cache is safe for concurrent builds (flock per entry). Forwarded host ports are
reserved per machine (`fwgen.qemu.pick_free_ports`), so parallel boots never share one.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import (
    EXIT_CHECK_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    BootError,
    ConfigError,
    FwgenError,
    host_file_error,
    out_of_memory,
)

# The step of an outcome that failed before its board was loaded.
LOAD_STEP = "load_board"


@dataclass(frozen=True)
class Outcome:
    """What happened to one board: its result (a BuildResult or BootResult) or its error.

    `step` is where the board stopped, or the last step when it finished: the pipeline
    function (`fwgen.build.build`, `fwgen.boot.boot`) step that was running, such as
    `load_board`, `fetch_board_packages`, `write_images`, `wait_for` (the ready line) or
    `run_checks`. `error` is a FwgenError, or any other exception for a bug (exit code 4).
    """

    board: str
    action: str  # "build" or "boot"
    step: str
    seconds: float
    exit_code: int = EXIT_OK
    result: object = None
    error: BaseException | None = None
    source: Path | None = None  # the board file, once found

    @property
    def verdict(self) -> str:
        """pass, fail (a check failed) or error (anything else stopped the board)."""
        if self.exit_code == EXIT_OK:
            return "pass"
        return "fail" if self.exit_code == EXIT_CHECK_FAILED else "error"

    @property
    def message(self) -> str:
        """The error on one line ("" without one); a bug names its exception type."""
        if self.error is None:
            return ""
        if isinstance(self.error, FwgenError):
            return str(self.error)
        return f"internal error: {type(self.error).__name__}: {self.error}"

    @property
    def where(self) -> str | None:
        """Where the error points: file:line:column for a board or overlay file, the console
        log for a guest, else the board file."""
        error = self.error
        if isinstance(error, ConfigError) and error.file:
            return ":".join(str(part) for part in (error.file, error.line, error.column) if part is not None)
        if isinstance(error, BootError) and error.hint:
            return error.hint.removeprefix("console log: ")
        return str(self.source) if self.source else None

    @property
    def console_tail(self) -> str:
        return self.error.console_tail if isinstance(self.error, BootError) else ""


def failed_step(error: BaseException | None, pipelines: Sequence[Callable], default: str) -> str:
    """The step `error` came out of, read from the traceback: the public function the
    pipeline (one of `pipelines`, or a private helper of its module) was calling when it was
    raised. Context-manager frames (contextlib, `errors.writing`) are skipped, and an error
    raised by one of those is traced through its cause. `default` when the error never
    passed through a pipeline; the pipeline's name when it raised the error itself."""
    codes = {pipeline.__code__ for pipeline in pipelines}
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        inside = None
        tb = error.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code in codes:
                inside = code
            elif inside is not None and not _is_plumbing(code.co_filename) and not (
                    code.co_filename == inside.co_filename and code.co_name.startswith("_")):
                return code.co_name
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
        if error is None and inside is not None:
            return inside.co_name
    return default


def _is_plumbing(filename: str) -> bool:
    return os.path.basename(filename) in ("contextlib.py", "errors.py")


def run_board(
    name: str,
    action: str,
    load: Callable[[str], object],
    work: Callable[[object], tuple[object, int, str]],
    pipelines: Sequence[Callable],
) -> Outcome:
    """Load board `name` and run `work` on it; every error becomes the Outcome's.

    `work(board)` returns (result, exit code, last step): a boot whose checks failed returns
    EXIT_CHECK_FAILED, it does not raise."""
    started = time.monotonic()
    board_name, source = name, None
    try:
        board = load(name)
        board_name, source = board.name, board.source  # type: ignore[attr-defined]
        result, code, step = work(board)
        return Outcome(board_name, action, step, time.monotonic() - started, code, result, source=source)
    except Exception as e:  # noqa: BLE001 (a bug in one board's run must not stop the others)
        # An OSError naming a host path (permission denied on --out) is the user's: exit 2;
        # so is a machine too small for the board.
        error = (host_file_error(e) if isinstance(e, OSError) else None) or e
        if isinstance(e, MemoryError):
            error = out_of_memory(e)
        if error is not e:
            error.__cause__ = e  # --verbose shows where it came from
        step = failed_step(e, pipelines, action) if source is not None else LOAD_STEP
        code = error.exit_code if isinstance(error, FwgenError) else EXIT_INTERNAL
        return Outcome(board_name, action, step, time.monotonic() - started, code, error=error, source=source)


def run_boards(
    names: Sequence[str],
    run_one: Callable[[str], Outcome],
    *,
    jobs: int = 1,
    on_done: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """`run_one` for every name, `jobs` at a time; the outcomes in the order of `names`.

    `on_done` sees each outcome as it comes (from the calling thread). The workers are daemon
    threads: Ctrl-C in the calling thread ends fwgen, and every QEMU with it."""
    todo: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
    done: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
    for item in enumerate(names):
        todo.put(item)

    def work() -> None:
        while True:
            try:
                index, name = todo.get_nowait()
            except queue.Empty:
                return
            done.put((index, run_one(name)))

    for number in range(min(jobs, len(names))):
        threading.Thread(target=work, name=f"fwgen-board-{number}", daemon=True).start()
    outcomes: dict[int, Outcome] = {}
    while len(outcomes) < len(names):
        with contextlib.suppress(queue.Empty):
            index, outcome = done.get(timeout=0.5)  # a timeout, so Ctrl-C is seen at once
            outcomes[index] = outcome
            on_done(outcome)
    return [outcomes[i] for i in range(len(names))]


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """The run's exit code: the highest of its boards' (0 when every board passed)."""
    return max((o.exit_code for o in outcomes), default=EXIT_OK)


def unique(names: Sequence[str], key: Callable[[str], str] = str) -> Iterator[str]:
    """`names` in order, each `key` once (the first name with it)."""
    seen: set[str] = set()
    for name in names:
        identity = key(name)
        if identity not in seen:
            seen.add(identity)
            yield name


__all__ = ["Outcome", "exit_code", "failed_step", "run_board", "run_boards", "unique"]
