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


def test_show_includes_overlay_variables_services_and_checks_and_only_the_outputs_sections():
    board = json.loads(invoke("show", "qemu-aarch64", "--json").output)
    assert not {"sdcard", "disk", "uboot", "flash"} & set(board)  # an initramfs board: none of them
    overlays = {overlay["name"]: overlay for overlay in board["overlays"]}
    assert list(overlays)[0] == "base"
    httpd = overlays["httpd"]
    assert httpd["services"]["httpd"]["command"]
    assert any(check["port"] == 80 for check in httpd["checks"])
    port = httpd["variables"]["httpd_port"]
    assert port["default"] == "80" and port["value"] == "80" and port["description"]
    sdcard = json.loads(invoke("show", "rpi-zero", "--json").output)
    assert "sdcard" in sdcard and "uboot" not in sdcard
    router = json.loads(invoke("show", "qemu-mips-router", "--json").output)
    assert {"flash", "uboot", "disk"} <= set(router) and "sdcard" not in router


def test_boot_without_a_build_says_what_to_do(tmp_path):
    result = invoke("boot", "--board", "qemu-aarch64", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "fwgen build --board qemu-aarch64" in result.output


# --- several boards, JSON on failure, exit codes -----------------------------------------------


def test_every_board_given_runs_and_the_exit_code_is_the_highest(tmp_path):
    """`--board a --board b` ran only b; now every board (options, arguments) gets a result."""
    bad = REPO / "tests" / "invalid_boards" / "unknown_overlay.yaml"
    result = CliRunner().invoke(main, ["boot", "--board", "qemu-aarch64", "--board", "qemu-armv7", str(bad),
                                       "--out", str(tmp_path), "-j", "2", "--json"])
    assert result.exit_code == 2
    records = json.loads(result.stdout)
    assert [r["board"] for r in records] == ["qemu-aarch64", "qemu-armv7", str(bad)]
    assert [r["step"] for r in records] == ["boot_spec_for", "boot_spec_for", "load_board"]
    assert records[0]["error"].endswith("no build found (run 'fwgen build --board qemu-aarch64' first)")
    assert records[2]["where"].endswith("invalid_boards/unknown_overlay.yaml:4:18")
    table = result.stderr.splitlines()  # with --json the summary goes to stderr
    assert table[-5].split() == ["BOARD", "STEP", "RESULT", "SECONDS"]
    assert table[-4].split()[:3] == ["qemu-aarch64", "boot_spec_for", "ERROR"]
    assert table[-1] == "0/3 boards passed"


def test_a_failed_build_prints_json_naming_the_error_where_and_step(tmp_path):
    bad = REPO / "tests" / "invalid_boards" / "unknown_overlay.yaml"
    result = CliRunner().invoke(main, ["build", "--board", str(bad), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 2
    record = json.loads(result.stdout)
    assert record["result"] == "error" and record["exit_code"] == 2 and record["step"] == "load_board"
    assert record["where"].endswith("invalid_boards/unknown_overlay.yaml:4:18")
    assert "unknown overlay 'htpd'" in record["error"]


def test_all_takes_every_board_found(tmp_path):
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "broken.yaml").write_text("arch: aarch64\noverlays: [nope]\n")
    result = CliRunner().invoke(main, ["boot", "--all", "--boards-dir", str(vendor), "--out", str(tmp_path / "out"),
                                       "--json"])
    records = json.loads(result.stdout)
    assert {"qemu-aarch64", "rpi-zero"} <= {r["board"] for r in records}
    assert {r["result"] for r in records} == {"error"}  # nothing is built in tmp_path
    assert result.exit_code == 2


def test_no_board_is_bad_input():
    result = invoke("build")
    assert result.exit_code == 2
    assert "no board given" in result.output


def test_an_internal_error_exits_4_in_one_line(tmp_path, monkeypatch):
    import fwgen.build

    def broken(*args, **kwargs):
        raise KeyError("manifest")

    monkeypatch.setattr(fwgen.build, "build", broken)
    result = CliRunner().invoke(main, ["build", "--board", "qemu-aarch64", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 4
    assert json.loads(result.stdout)["error"] == "internal error: KeyError: 'manifest'"
    assert "this is a bug" in result.stderr


def test_the_readme_documents_every_exit_code():
    from fwgen import errors

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("Exit codes"):readme.index("With several boards the exit code")]
    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert len(set(codes.values())) == len(codes)
    for value in codes.values():
        assert f"\n| {value} | " in section, f"exit code {value} is not in the README's exit-code section"


def test_a_board_given_twice_runs_once(tmp_path):
    board = REPO / "boards" / "qemu-aarch64.yaml"
    result = CliRunner().invoke(main, ["boot", "qemu-aarch64", "--board", str(board), "--all",
                                       "--out", str(tmp_path), "--json"])
    boards = [r["board"] for r in json.loads(result.stdout)]
    assert boards.count("qemu-aarch64") == 1 and boards[0] == "qemu-aarch64"
    assert len(boards) == len(set(boards)) >= 5
