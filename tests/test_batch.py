"""Running many boards: outcomes in order, really in parallel, and the step each error came from."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from types import SimpleNamespace

from fwgen.batch import Outcome, exit_code, failed_step, run_board, run_boards
from fwgen.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, UserError, writing


def fetch_packages(fail: BaseException) -> None:
    raise fail


def _helper(fail: BaseException) -> None:
    fetch_packages(fail)  # a private helper of the pipeline's module is not a step


def pipeline(fail: BaseException | None = None, *, at_top: bool = False) -> None:
    if at_top:
        raise UserError("refused by the pipeline itself")
    with writing(Path("/out"), "the outputs"):
        _helper(fail or UserError("no such package"))


def caught(**kwargs) -> BaseException:
    try:
        pipeline(**kwargs)
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("the pipeline did not fail")


def test_the_step_is_the_function_the_pipeline_was_calling():
    assert failed_step(caught(), [pipeline], "build") == "fetch_packages"


def test_an_error_a_context_manager_raised_is_traced_through_its_cause():
    error = caught(fail=OSError(errno.ENOSPC, "No space left on device", "/out/x"))
    assert type(error).__name__ == "StorageError"
    assert failed_step(error, [pipeline], "build") == "fetch_packages"


def test_an_error_of_the_pipeline_itself_or_elsewhere():
    assert failed_step(caught(at_top=True), [pipeline], "build") == "pipeline"
    assert failed_step(ValueError("never raised in a pipeline"), [pipeline], "build") == "build"


def test_boards_run_at_once_and_outcomes_keep_their_order():
    """Two boards that each wait for the other finish only when both run at the same time."""
    meeting = threading.Barrier(2, timeout=10)
    seen = []

    def run_one(name: str) -> Outcome:
        meeting.wait()
        return Outcome(name, "boot", "run_checks", 0.0)

    outcomes = run_boards(["b", "a"], run_one, jobs=2, on_done=lambda o: seen.append(o.board))
    assert [o.board for o in outcomes] == ["b", "a"]
    assert sorted(seen) == ["a", "b"]


def test_a_bug_in_one_board_is_its_outcome_not_the_runs():
    def load(name):
        return SimpleNamespace(name=name, source=Path(f"/boards/{name}.yaml"))

    def work(board):
        if board.name == "bad":
            raise KeyError("outputs")
        if board.name == "full":
            raise OSError(errno.EACCES, "Permission denied", "/out/full")
        return "built", 0, "publish_outputs"

    outcomes = [run_board(name, "build", load, work, [work]) for name in ("good", "bad", "full")]
    good, bad, full = outcomes
    assert (good.verdict, good.result, good.step) == ("pass", "built", "publish_outputs")
    assert (bad.exit_code, bad.message) == (EXIT_INTERNAL, "internal error: KeyError: 'outputs'")
    assert (full.exit_code, full.message) == (EXIT_BAD_INPUT, "/out/full: permission denied")
    assert full.where == "/boards/full.yaml"
    assert exit_code(outcomes) == EXIT_INTERNAL
