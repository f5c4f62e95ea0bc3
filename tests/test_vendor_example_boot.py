"""The example vendor overlay (overlays/examples/statusd: a C daemon written for fwgen) built
from one source folder for aarch64, armv7 and mipsel boards, each booted once under QEMU:
the daemon runs as a service and answers GET /status through the forwarded port."""

from __future__ import annotations

import json

import pytest
from buildutil import REPO, run_fwgen

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]

EXAMPLE = REPO / "overlays" / "examples" / "statusd"
# board -> what statusd's JSON must say the machine is (uname -m)
BOARDS = {"qemu-aarch64-disk": "aarch64", "qemu-armv7": "armv7l", "qemu-mips": "mips"}


@pytest.fixture(scope="module")
def boards_dir(tmp_path_factory):
    """Each in-tree board extended with the example overlay and statusd's port forwarded."""
    folder = tmp_path_factory.mktemp("vendor")
    for board in BOARDS:
        (folder / f"{board}-statusd.yaml").write_text(
            f"extends: {REPO / 'boards' / board}.yaml\n"
            f"overlays+: [{EXAMPLE}]\n"
            "qemu:\n  forward: [80, 8081]\n"
            "checks+:\n  - run: wget -qO- http://127.0.0.1:8081/status\n"
            f"    contains: '\"machine\": \"{BOARDS[board]}\"'\n")
    return folder


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_the_example_daemon_is_built_for_the_board_and_answers(board, boards_dir, cache_dir):
    board_file = boards_dir / f"{board}-statusd.yaml"
    out = boards_dir / "out"
    built = run_fwgen("build", "--board", str(board_file), "--out", str(out), cache=cache_dir)
    assert built.returncode == 0, built.stderr
    name = f"{board}-statusd"
    manifest = json.loads((out / name / "manifest.json").read_text())
    assert manifest["files"]["/usr/sbin/statusd"] == "build:statusd/statusd"
    [record] = manifest["inputs"]["builds"]
    assert record["build"] == "statusd/statusd" and set(record["files"]) == {"/usr/sbin/statusd"}
    assert "glibc" not in manifest["elf_libc"]

    booted = run_fwgen("boot", "--board", str(board_file), "--out", str(out), "--json", cache=cache_dir)
    report = json.loads(booted.stdout)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert booted.returncode == 0 and not failed, failed or booted.stderr
    names = {c["name"] for c in report["checks"]}
    assert {"service: statusd", "http: /status (port 8081)", "http: /nothing-here (port 8081)"} <= names
    assert any("8081/status" in n for n in names)
