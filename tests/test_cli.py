"""The command line as a user meets it: exit codes, one-line errors, listings, JSON."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fwgen.cli import main

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_a_broken_board_is_a_one_line_error_with_exit_code_2_and_writes_nothing(tmp_path):
    bad = REPO / "tests" / "invalid_boards" / "unknown_overlay.yaml"
    result = invoke("build", "--board", str(bad), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    message = result.output.strip()
    assert "\n" not in message
    assert "unknown_overlay.yaml:4:18: overlays[1]: unknown overlay 'htpd'" in message
    assert "did you mean 'httpd'" in message
    assert not (tmp_path / "out").exists()


def test_an_unknown_board_name_suggests_the_closest(tmp_path):
    result = invoke("show", "qemu-arch64")
    assert result.exit_code == 2
    assert "qemu-aarch64" in result.output


def test_boards_lists_the_shipped_boards_and_extra_folders(tmp_path):
    vendor = tmp_path / "vendor-boards"
    vendor.mkdir()
    text = (REPO / "boards" / "qemu-aarch64.yaml").read_text()
    (vendor / "acme-router.yaml").write_text(
        text.replace("name: qemu-aarch64", "name: acme-router").replace(
            "description: QEMU virt", "description: ACME router on QEMU virt"))
    result = invoke("boards", "--boards-dir", str(vendor), "--json")
    assert result.exit_code == 0, result.output
    names = {b["name"]: b for b in json.loads(result.output)}
    assert {"qemu-aarch64", "acme-router"} <= set(names)
    assert names["acme-router"]["description"].startswith("ACME router")


def test_show_prints_the_resolved_board_as_json_and_yaml():
    result = invoke("show", "qemu-aarch64", "--json")
    assert result.exit_code == 0, result.output
    board = json.loads(result.output)
    assert board["arch"] == "aarch64"
    assert board["qemu"]["profile"]["binary"] == "qemu-system-aarch64"
    assert board["kernel"]["modules"][-1] == "virtio_net"
    yaml_out = invoke("show", "qemu-aarch64")
    assert yaml_out.exit_code == 0 and "arch: aarch64" in yaml_out.output


def test_boot_without_a_build_says_what_to_do(tmp_path):
    result = invoke("boot", "--board", "qemu-aarch64", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "fwgen build --board qemu-aarch64" in result.output
