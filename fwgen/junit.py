"""JUnit XML reports of a run over boards, as Jenkins, GitLab, GitHub Actions and Azure read.

The layout is the Ant JUnit format those systems share (the facts of its published schemas,
tests/data/junit-10.xsd): `<testsuites>` holds one `<testsuite>` per board, and each suite
one `<testcase>` per step that can fail on its own:

- a build: one test case, `build`;
- a boot: `ready` (the guest printed its ready line; its time is the seconds to ready), then
  one test case per check, with the check's time, and a failed `qemu` when QEMU was gone
  before the checks ended;
- a board that failed before any of that (a broken board file, no build, QEMU died): one test
  case for the step that failed.

A failed check or boot is a `<failure>` (message: the one-line detail; text: the detail, where,
the step and the console's tail); a bug or a tool that broke is an `<error>`. The file appears
atomically.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from .batch import LOAD_STEP, Outcome
from .errors import EXIT_INTERNAL, writing
from .files import replacing
from .qemu import CONTROL_SEQUENCE

# Characters XML 1.0 cannot carry at all, not even escaped (a console prints any of them).
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Boot steps after the ready line that can fail the boot (fwgen.boot.boot's own calls).
AFTER_READY = ("run_checks", "poweroff")


def junit_xml(outcomes: Sequence[Outcome], *, action: str, started: datetime) -> bytes:
    """The report of one run (`action` "build" or "boot") started at `started`, as bytes."""
    root = ET.Element("testsuites", name=f"fwgen {action}")
    suites = [_suite(index, outcome, started) for index, outcome in enumerate(outcomes)]
    root.extend(suites)
    for counter in ("tests", "failures", "errors"):
        root.set(counter, str(sum(int(s.get(counter, "0")) for s in suites)))
    root.set("time", _seconds(sum(o.seconds for o in outcomes)))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(path: Path, outcomes: Sequence[Outcome], *, action: str, started: datetime) -> None:
    """Write the report to `path` atomically: a reader never sees half a file."""
    data = junit_xml(outcomes, action=action, started=started)
    folder = path.parent if str(path.parent) else Path(".")
    with writing(path, "the JUnit report"):
        folder.mkdir(parents=True, exist_ok=True)
        with replacing(folder / path.name) as f:
            f.write(data)


def _suite(index: int, outcome: Outcome, started: datetime) -> ET.Element:
    suite = ET.Element("testsuite", name=_text(outcome.board), id=str(index), package=f"fwgen.{outcome.action}",
                       timestamp=started.strftime("%Y-%m-%dT%H:%M:%S"), hostname=socket.gethostname() or "localhost",
                       time=_seconds(outcome.seconds))
    properties = ET.SubElement(suite, "properties")
    facts = {"action": outcome.action, "step": outcome.step, "exit_code": str(outcome.exit_code)}
    if outcome.source:
        facts["board_file"] = str(outcome.source)
    for name, value in facts.items():
        ET.SubElement(properties, "property", name=name, value=_text(value))
    cases = _cases(outcome)
    suite.extend(cases)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("errors", str(sum(c.find("error") is not None for c in cases)))
    suite.set("skipped", "0")
    return suite


def _cases(outcome: Outcome) -> list[ET.Element]:
    classname = f"fwgen.{outcome.action}.{outcome.board}"
    if outcome.error is not None:
        name = _failed_case_name(outcome)
        case = _case(classname, name, outcome.seconds)
        kind = "error" if outcome.exit_code == EXIT_INTERNAL else "failure"
        text = "\n".join(filter(None, [outcome.message, f"where: {outcome.where}" if outcome.where else "",
                                       f"step: {outcome.step}", _tail_section(outcome.console_tail)]))
        _fail(case, kind, outcome.message, type(outcome.error).__name__, text)
        return [case]
    if outcome.action == "build":
        return [_case(classname, "build", outcome.seconds)]
    booted = outcome.result
    cases = [_case(classname, "ready", booted.ready_seconds)]  # type: ignore[attr-defined]
    for check in booted.checks:  # type: ignore[attr-defined]
        case = _case(classname, check.name, check.seconds)
        if not check.passed:
            _fail(case, "failure", check.detail, f"{check.kind} check",
                  "\n".join(filter(None, [check.detail, f"console log: {booted.console_log}",  # type: ignore[attr-defined]
                                          _tail_section(check.console_tail)])))
        cases.append(case)
    if booted.died:  # type: ignore[attr-defined]
        case = _case(classname, "qemu", 0.0)
        _fail(case, "failure", booted.died, "BootError", f"{booted.died}\nconsole log: {booted.console_log}")  # type: ignore[attr-defined]
        cases.append(case)
    return cases


def _failed_case_name(outcome: Outcome) -> str:
    """The test case an error fails: load, build, ready (the boot up to the ready line), or
    the later boot step (poweroff)."""
    if outcome.step == LOAD_STEP:
        return "load"
    if outcome.action == "build":
        return "build"
    return outcome.step if outcome.step in AFTER_READY else "ready"


def _case(classname: str, name: str, seconds: float) -> ET.Element:
    return ET.Element("testcase", classname=_text(classname), name=_text(name), time=_seconds(seconds))


def _fail(case: ET.Element, kind: str, message: str, type_: str, text: str) -> None:
    element = ET.SubElement(case, kind, message=_text(message), type=_text(type_))
    element.text = _text(text)


def _tail_section(tail: str) -> str:
    tail = CONTROL_SEQUENCE.sub("", tail).rstrip()
    return f"--- console tail ---\n{tail}" if tail.strip() else ""


def _text(value: str) -> str:
    return NOT_XML.sub("\ufffd", value)


def _seconds(value: float) -> str:
    return f"{value:.3f}"


__all__ = ["junit_xml", "write_junit"]
