"""fwgen in CI: several boards built and booted in one call, two at a time, with a JUnit report
the CI system reads, and exit codes that tell a failed check from a guest that never came up.

The boards are small ones derived from qemu-aarch64 (the fastest guest), written into the
test's folder: they share its kernel, feeds and BusyBox, so the shared cache builds them."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
from buildutil import run_fwgen

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]

SCHEMA = Path(__file__).parent / "data" / "junit-10.xsd"

BOARD = """\
name: {name}
description: a small qemu-aarch64 for the CI test
arch: aarch64
hostname: {name}
feeds:
  - name: debian
    type: deb
    url: http://deb.debian.org/debian
    suite: bookworm
    components: [main]
kernel:
  package: linux-image-cloud-arm64
  cmdline: console=ttyAMA0 panic=-1
  modules: [virtio_mmio, failover, net_failover, virtio_net]
overlays: [base, httpd]
outputs: [initramfs]
qemu:
  profile: virt-aarch64
  forward: [80]
checks:
  - run: uname -m
    expect: {arch}
  - http: /
    port: 80
    status: 200
    contains: {name}
"""
# ci-c's first check expects the wrong machine: its boot passes everything but that check.
BOARDS = {"ci-a": "aarch64", "ci-b": "aarch64", "ci-c": "mips"}


@pytest.fixture(scope="module")
def vendor(tmp_path_factory, cache_dir):
    """Three boards in a vendor folder, built in one call two at a time."""
    root = tmp_path_factory.mktemp("ci")
    boards = root / "boards"
    boards.mkdir()
    for name, arch in BOARDS.items():
        (boards / f"{name}.yaml").write_text(BOARD.format(name=name, arch=arch))
    started = time.monotonic()
    built = run_fwgen("build", "--board", "ci-a", "--board", "ci-b", "--board", "ci-c", "-j", "2",
                      "--boards-dir", str(boards), "--out", str(root / "out"), cache=cache_dir)
    print(f"three boards built with -j 2 in {time.monotonic() - started:.1f} s")
    assert built.returncode == 0, built.stdout + built.stderr
    for name in BOARDS:
        assert (root / "out" / name / "manifest.json").is_file()
    assert built.stdout.splitlines()[-1] == "3/3 boards passed"
    return root


def test_three_boards_boot_two_at_a_time_with_a_junit_report(vendor, cache_dir):
    report = vendor / "report.xml"
    started = time.monotonic()
    result = run_fwgen("boot", "--all", "--boards-dir", str(vendor / "boards"), "--out", str(vendor / "out"),
                       "-j", "2", "--junit", str(report), cache=cache_dir, cwd=vendor)
    seconds = time.monotonic() - started
    print(f"three boards booted with -j 2 in {seconds:.1f} s")
    # --all also finds fwgen's own boards, not built here: each is an error of its own (2),
    # and ci-c's failed check (1) is lower.
    assert result.returncode == 2, result.stdout + result.stderr
    xmlschema.XMLSchema(SCHEMA).validate(str(report))
    suites = {s.get("name"): s for s in ET.parse(report).getroot().iter("testsuite")}
    assert set(BOARDS) <= set(suites)
    for name in ("ci-a", "ci-b"):
        cases = [c.get("name") for c in suites[name].iter("testcase")]
        assert cases[:3] == ["ready", "run: uname -m", "http: / (port 80)"], cases
        assert suites[name].get("failures") == "0" and suites[name].get("errors") == "0"
        assert all(float(c.get("time")) > 0 for c in suites[name].iter("testcase"))
    failure = suites["ci-c"].find("testcase[@name='run: uname -m']/failure")
    assert failure.get("message") == "expected output 'mips', got 'aarch64'"
    tail = failure.text.split("--- console tail ---\n")[1]
    assert "aarch64" in tail.splitlines()[-5:]  # the console when the check failed: uname's answer
    assert suites["ci-c"].find("testcase[@name='http: / (port 80)']/failure") is None
    unbuilt = suites["qemu-aarch64"].find("testcase/failure")
    assert "no build found" in unbuilt.get("message")
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("ci-")}
    assert [rows[n][1:3] for n in BOARDS] == [["run_checks", "PASS"], ["run_checks", "PASS"], ["run_checks", "FAIL"]]


def test_only_a_failed_check_exits_1_and_json_reports_every_board(vendor, cache_dir):
    result = run_fwgen("boot", "ci-c", "ci-a", "--boards-dir", str(vendor / "boards"), "--out", str(vendor / "out"),
                       "-j", "2", "--json", cache=cache_dir)
    assert result.returncode == 1, result.stderr
    records = {r["board"]: r for r in json.loads(result.stdout)}
    assert records["ci-a"]["result"] == "pass" and records["ci-c"]["result"] == "fail"
    failed = [c["name"] for c in records["ci-c"]["checks"] if not c["passed"]]
    assert failed == ["run: uname -m"]


def test_a_guest_that_never_becomes_ready_exits_3_with_json_on_stdout(vendor, cache_dir, tmp_path):
    """A kernel that prints nothing: the boot times out. Exit code 3, and --json says so."""
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "mute.yaml").write_text(
        BOARD.format(name="mute", arch="aarch64").replace("forward: [80]", "forward: [80]\n  timeout: 3"))
    out = tmp_path / "out" / "mute"
    out.mkdir(parents=True)
    (out / "Image").write_bytes(b"\0" * 65536)  # no Linux: the CPU runs zeros and prints nothing
    built = json.loads((vendor / "out" / "ci-a" / "manifest.json").read_text())
    initramfs = built["outputs"]["initramfs"]["file"]
    (out / initramfs).symlink_to(vendor / "out" / "ci-a" / initramfs)
    (out / "manifest.json").write_text(json.dumps({"outputs": {"kernel": {"file": "Image"},
                                                               "initramfs": {"file": initramfs}}}))
    result = run_fwgen("boot", "--board", "mute", "--boards-dir", str(boards), "--out", str(tmp_path / "out"),
                       "--json", cache=cache_dir, env={"FWGEN_TIMEOUT_FACTOR": "1"})
    assert result.returncode == 3, result.stderr
    record = json.loads(result.stdout)
    assert record["result"] == "error" and record["step"] == "wait_for"
    assert "fwgen: ready" in record["error"]
    assert record["where"] == str(tmp_path / "out" / ".state" / "mute" / "console.log")


def test_a_guest_that_dies_during_the_checks_exits_3(vendor, cache_dir, tmp_path):
    """A check that takes the guest down: the checks after it fail, and the boot failed (3),
    not only a check (1)."""
    boards = tmp_path / "boards"
    boards.mkdir()
    text = BOARD.format(name="dies", arch="aarch64").replace("checks:\n", "checks:\n  - run: poweroff -f\n")
    (boards / "dies.yaml").write_text(text)
    out = tmp_path / "out"
    built = run_fwgen("build", "dies", "--boards-dir", str(boards), "--out", str(out), cache=cache_dir)
    assert built.returncode == 0, built.stderr  # its own build: boot refuses one made from other board files
    report = tmp_path / "report.xml"
    result = run_fwgen("boot", "dies", "--boards-dir", str(boards), "--out", str(out), "--json",
                       "--junit", str(report), cache=cache_dir)
    assert result.returncode == 3, result.stderr
    record = json.loads(result.stdout)
    assert record["died"] == "QEMU exited with code 0 during the checks"
    first, *later = record["checks"]
    assert first["name"] == "run: poweroff -f" and "QEMU exited with code 0" in first["detail"]
    assert len(later) >= 2 and {c["detail"] for c in later} == {"not run: QEMU had exited with code 0"}
    xmlschema.XMLSchema(SCHEMA).validate(str(report))
    qemu = ET.parse(report).getroot().find("testsuite/testcase[@name='qemu']/failure")
    assert qemu.get("message") == "QEMU exited with code 0 during the checks"
