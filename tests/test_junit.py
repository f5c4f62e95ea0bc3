"""JUnit XML reports: valid against the JUnit schema CI systems use, whatever the console printed.

tests/data/junit-10.xsd is written from the published JUnit schemas' facts (Jenkins' xUnit
junit-10.xsd nesting, Ant's required attributes); xmlschema (test extras) validates."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest
import xmlschema
from click.testing import CliRunner

from fwgen.batch import Outcome
from fwgen.boot import BootResult
from fwgen.checks import CheckResult
from fwgen.cli import main
from fwgen.errors import BootError, ConfigError, StorageError
from fwgen.junit import junit_xml, write_junit

SCHEMA = Path(__file__).parent / "data" / "junit-10.xsd"
STARTED = datetime(2026, 12, 2, 1, 2, 3)


@pytest.fixture(scope="module")
def schema():
    return xmlschema.XMLSchema(SCHEMA)


def booted(tmp_path: Path) -> Outcome:
    # What a console really carries: BusyBox's cursor query, a BEL, a NUL.
    tail = "fwgen: ready\n/ # \x1b[6n\x07httpd: bind: Address in use\x00\nlast line\n"
    result = BootResult("acme", 4.5, [
        CheckResult("run: uname -m", "run", True, 0.25),
        CheckResult("http: / (port 80)", "http", False, 0.5, "GET http://127.0.0.1:1/: expected status 200, got 404",
                    tail),
    ], tmp_path / "console.log")
    return Outcome("acme", "boot", "run_checks", 6.0, 1, result, source=tmp_path / "acme.yaml")


def test_a_boot_with_a_failed_check_is_a_valid_report_with_the_console_tail(tmp_path, schema):
    data = junit_xml([booted(tmp_path)], action="boot", started=STARTED)
    schema.validate(data.decode())
    root = ET.fromstring(data)
    suite = root.find("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("acme", "3", "1", "0")
    assert suite.get("timestamp") == "2026-12-02T01:02:03"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["ready", "run: uname -m", "http: / (port 80)"]
    assert cases["ready"].get("time") == "4.500" and cases["run: uname -m"].get("time") == "0.250"
    failure = cases["http: / (port 80)"].find("failure")
    assert failure.get("message") == "GET http://127.0.0.1:1/: expected status 200, got 404"
    assert failure.get("type") == "http check"
    assert "--- console tail ---\nfwgen: ready\n/ # \ufffdhttpd: bind: Address in use\ufffd\nlast line" in failure.text
    assert cases["ready"].find("failure") is None


def test_errors_before_the_checks_are_failed_test_cases(tmp_path, schema):
    load = Outcome("bad.yaml", "build", "load_board", 0.1, 2,
                   error=ConfigError("unknown overlay 'htpd'", file="bad.yaml", line=4, column=18))
    hung = Outcome("acme", "boot", "wait_for", 30.0, 3, source=tmp_path / "acme.yaml",
                   error=BootError("virt-aarch64: no 'fwgen: ready' on the console after 30 s", "Booting Linux\x1b[0m",
                                   hint="console log: out/acme/boot/console.log"))
    bug = Outcome("other", "build", "write_images", 2.0, 4, error=KeyError("size"))
    data = junit_xml([load, hung, bug], action="boot", started=STARTED)
    schema.validate(data.decode())
    root = ET.fromstring(data)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "2", "1")
    load_case, hung_case, bug_case = root.iter("testcase")
    assert load_case.get("name") == "load"
    assert "where: bad.yaml:4:18" in load_case.find("failure").text
    assert hung_case.get("name") == "ready" and hung_case.get("time") == "30.000"
    text = hung_case.find("failure").text
    assert "step: wait_for" in text and "where: out/acme/boot/console.log" in text
    assert text.endswith("--- console tail ---\nBooting Linux")
    assert bug_case.find("error").get("message") == "internal error: KeyError: 'size'"


def test_the_schema_refuses_what_ci_systems_refuse(tmp_path, schema):
    """The check is real: a report without a testcase's time, or with a count that is not a
    number, is refused."""
    good = junit_xml([booted(tmp_path)], action="boot", started=STARTED).decode()
    assert schema.is_valid(good)
    assert not schema.is_valid(good.replace(' time="0.250"', "", 1))
    assert not schema.is_valid(good.replace('tests="3"', 'tests="three"', 1))


def test_the_report_is_written_atomically_and_replaced_whole(tmp_path, monkeypatch):
    path = tmp_path / "reports" / "report.xml"
    write_junit(path, [booted(tmp_path)], action="boot", started=STARTED)
    first = path.read_bytes()
    assert first.startswith(b"<?xml") and list(path.parent.iterdir()) == [path]

    import fwgen.files

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fwgen.files.os, "replace", fail)
    with pytest.raises(StorageError, match="no space left on device while writing the JUnit report"):
        write_junit(path, [], action="boot", started=STARTED)
    assert path.read_bytes() == first and list(path.parent.iterdir()) == [path]


def test_junit_from_the_cli_for_a_board_that_does_not_load(tmp_path, schema):
    bad = Path(__file__).parent / "invalid_boards" / "unknown_overlay.yaml"
    report = tmp_path / "report.xml"
    result = CliRunner().invoke(main, ["build", str(bad), "--out", str(tmp_path / "out"), "--junit", str(report)])
    assert result.exit_code == 2
    schema.validate(str(report))
    (suite,) = ET.parse(report).getroot().iter("testsuite")
    assert suite.get("name").endswith("unknown_overlay.yaml") and suite.get("failures") == "1"
    assert "unknown overlay 'htpd'" in suite.find("testcase/failure").get("message")
