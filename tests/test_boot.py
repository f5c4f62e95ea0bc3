"""A real QEMU boot of qemu-aarch64: ready line, uname over the console, HTTP from the host."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest
from buildutil import REPO, boot_with_declared_firmware_only, check_sboms, run_fwgen

from fwgen.boot import READY_MARKER, boot_spec_for
from fwgen.config import load_board
from fwgen.qemu import Machine

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]


def fetch_page(url: str, attempts: int = 20) -> tuple[int, str]:
    """GET with retries: httpd is a supervised service that may start just after the ready line."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                return response.status, response.read().decode()
        except (ConnectionError, urllib.error.URLError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def out_root(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("out")
    result = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(out), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return out


def test_guest_reports_ready_runs_commands_and_serves_http(out_root):
    board = load_board("qemu-aarch64")
    spec = boot_spec_for(board, out_root / "qemu-aarch64")
    with Machine(spec, out_root / "machine") as machine:
        machine.start()
        machine.wait_for(READY_MARKER, timeout=120)
        status, output = machine.run("uname -m")
        assert (status, output.strip()) == (0, "aarch64")
        status, _ = machine.run("test -e /nonexistent")
        assert status == 1
        status, body = fetch_page(f"http://127.0.0.1:{machine.host_port(80)}/")
        assert status == 200
        assert "fwgen-aarch64" in body and "board: qemu-aarch64" in body
        machine.poweroff()
    log = (out_root / "machine" / "console.log").read_text(errors="replace")
    assert "fwgen-init:" in log and READY_MARKER in log


def test_fwgen_boot_prints_pass_and_the_boot_time(out_root, cache_dir):
    result = run_fwgen("boot", "--board", "qemu-aarch64", "--out", str(out_root), cache=cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("PASS qemu-aarch64: ready after ")
    assert "PASS  run: uname -m" in result.stdout


def test_a_failing_check_fails_the_boot_with_exit_1(out_root, cache_dir, tmp_path):
    board_file = tmp_path / "wrong-arch.yaml"
    text = (REPO / "boards" / "qemu-aarch64.yaml").read_text()
    board_file.write_text(text.replace("expect: aarch64", "expect: mips").replace(
        "name: qemu-aarch64", "name: wrong-arch"))
    # Built for itself: fwgen boot refuses a build made from other board files (its checks
    # differ), so another board's build cannot stand in for it.
    built = run_fwgen("build", "--board", str(board_file), "--out", str(out_root), cache=cache_dir)
    assert built.returncode == 0, built.stderr
    result = run_fwgen("boot", "--board", str(board_file), "--out", str(out_root), "--json", cache=cache_dir)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["run: uname -m"]
    assert "aarch64" in failed[0]["detail"]


def test_guest_boots_with_only_its_profiles_firmware(out_root, tmp_path):
    """virt-aarch64's part of the firmware guard (tests/test_boards_boot.py has the others)."""
    seconds = boot_with_declared_firmware_only("qemu-aarch64", out_root / "qemu-aarch64", tmp_path)
    print(f"qemu-aarch64: ready after {seconds:.1f} s with only the declared firmware")


def test_boot_shell_prints_the_ports_attaches_the_console_and_ctrl_bracket_powers_off(out_root, cache_dir):
    """`fwgen boot --shell`: what a person types reaches the guest's shell and its answer comes back."""
    import os
    import subprocess
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "fwgen.cli", "boot", "--shell", "--board", "qemu-aarch64",
                             "--out", str(out_root)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, FWGEN_CACHE=str(cache_dir)))
    seen = {"stdout": b"", "stderr": b""}

    def collect(name, stream):
        for chunk in iter(lambda: stream.read1(4096), b""):
            seen[name] += chunk

    readers = [threading.Thread(target=collect, args=(n, s), daemon=True)
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for reader in readers:
        reader.start()

    def wait_until(name, text, timeout):
        deadline = time.monotonic() + timeout
        while text not in seen[name]:
            assert proc.poll() is None, seen["stderr"].decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, f"no {text!r} on {name}: {seen[name][-2000:]!r}"
            time.sleep(0.2)

    try:
        wait_until("stderr", b"console attached", 600)
        assert b"guest port 22: ssh -p " in seen["stderr"] and b"guest port 80: http://127.0.0.1:" in seen["stderr"]
        proc.stdin.write(b"\necho fwgen-shell-$((6*7))\n")
        proc.stdin.flush()
        wait_until("stdout", b"fwgen-shell-42", 120)
        proc.stdin.write(b"\x1d")
        proc.stdin.flush()
        assert proc.wait(timeout=180) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for reader in readers:
        reader.join(timeout=10)
    assert b"console closed (escape)" in seen["stderr"]


# -- the SBOMs and licences of the same build ---------------------------------------------------
def test_sboms_validate_and_relate_packages_images_busybox_and_overlays(out_root):
    spdx, cdx = check_sboms(out_root / "qemu-aarch64")
    packages = {p["SPDXID"]: p for p in spdx["packages"]}
    relations = {(packages[r["spdxElementId"]]["name"], r["relationshipType"], packages[r["relatedSpdxElement"]]["name"])
                 for r in spdx["relationships"] if r["spdxElementId"] in packages and r["relatedSpdxElement"] in packages}
    assert ("initramfs.cpio.gz", "CONTAINS", "ssh/dropbear") in relations  # compiled for the ssh overlay
    assert ("initramfs.cpio.gz", "CONTAINS", "busybox") in relations
    assert ("kernel", "CONTAINS", "busybox") not in relations
    busybox = next(p for p in spdx["packages"] if p["name"] == "busybox")
    assert "1.35.0-clang-ptr-to-globals.patch" in busybox["sourceInfo"]
    ssh = next(c for c in cdx["components"] if c["name"] == "ssh")
    init = next(f for f in ssh["components"] if f["name"] == "/etc/service/dropbear/run")
    assert len(init["hashes"][0]["content"]) == 64
    refs = {i["licenseId"]: i["extractedText"] for i in spdx["hasExtractedLicensingInfos"]}
    assert refs["LicenseRef-CRYPTOGAMS"].startswith("All rights reserved.")  # from the kernel's DEP-5
    sizes = {name: (out_root / "qemu-aarch64" / name).stat().st_size for name in ("sbom.spdx.json", "sbom.cdx.json")}
    print(f"qemu-aarch64: {len(spdx['packages'])} SPDX packages, {len(spdx['files'])} files, "
          f"{len(cdx['components'])} CycloneDX components, sizes {sizes}")


def test_licenses_names_known_licences_and_deny_fails_naming_the_packages(out_root):
    from click.testing import CliRunner

    from fwgen.cli import main

    def licenses(*args: str):  # in-process: four runs of one command on one build
        return CliRunner().invoke(main, ["licenses", "qemu-aarch64", "--out", str(out_root), *args])

    listed = licenses("--json")
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["busybox"]["license"] == "GPL-2.0-only" and rows["busybox"]["component"] == "busybox"
    [kernel] = [r for r in rows.values() if r["component"] == "kernel"]
    assert kernel["name"].startswith("linux-image-") and "GPL-2.0-only" in kernel["license"].split(" AND ")

    table = licenses()
    assert table.exit_code == 0 and f"(usr/share/doc/{kernel['name']}/copyright)" in table.stdout
    denied = licenses("--deny", "GPL-2.0-only,AGPL-3.0-only")
    assert denied.exit_code == 1, denied.output
    [error] = denied.stderr.splitlines()
    assert f"qemu-aarch64: 2 component(s) with a denied licence: {kernel['name']} {kernel['version']} " \
           "(GPL-2.0-only), busybox 1.35.0 (GPL-2.0-only)" in error
    allowed = licenses("--deny", "GPL-3.0-only")
    assert allowed.exit_code == 0, allowed.output


def test_a_build_older_than_its_board_file_is_not_booted_and_boot_build_rebuilds_it(tmp_path, cache_dir):
    """The build records its board's files; a board edited since is refused at once (no QEMU),
    and `fwgen boot --build` rebuilds it (a no-op when up to date) and boots."""
    board = tmp_path / "stale-aarch64.yaml"
    board.write_text((REPO / "boards" / "qemu-aarch64.yaml").read_text().replace("name: qemu-aarch64\n", ""))
    out = tmp_path / "out"
    built = run_fwgen("build", str(board), "--out", str(out), cache=cache_dir)
    assert built.returncode == 0, built.stderr
    board.write_text(board.read_text().replace("hostname: fwgen-aarch64", "hostname: edited-after-the-build"))
    refused = run_fwgen("boot", str(board), "--out", str(out), cache=cache_dir, timeout=120)
    assert refused.returncode == 2
    assert "built from other board or overlay files than stale-aarch64.yaml's now" in refused.stderr
    assert "fwgen boot --build stale-aarch64" in refused.stderr
    assert not (out / ".state" / "stale-aarch64" / "console.log").exists()  # QEMU never started
    booted = run_fwgen("boot", "--build", str(board), "--out", str(out), cache=cache_dir,
                       env={"FWGEN_TIMEOUT_FACTOR": os.environ.get("FWGEN_TIMEOUT_FACTOR", "1")})
    assert booted.returncode == 0, booted.stderr
    assert "PASS stale-aarch64" in booted.stdout
