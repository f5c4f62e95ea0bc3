"""Package scripts (fwgen/scripts.py) decided for real packages of ../shared/samples (Alpine
3.13.4, OpenWrt 23.05.2), and the first-boot runner (overlays/base/files/sbin/
fwgen-package-scripts) run by the host's sh under a scratch root: a failing script is reported
on the console and by `status`, and the list runs once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from buildutil import REPO

from fwgen.errors import UserError
from fwgen.fetch import FetchedPackage, get_backend
from fwgen.fetch.apk import ApkIndexEntry, package_from_entry
from fwgen.fetch.ipk import package_from_stanza
from fwgen.guest import PACKAGE_SCRIPTS, PACKAGE_SCRIPTS_RUNNER
from fwgen.rootfs import RootFS
from fwgen.scripts import handle_package_scripts

RUNNER = REPO / "overlays" / "base" / "files" / PACKAGE_SCRIPTS_RUNNER.lstrip("/")


def _alpine(samples: Path, name: str, version: str) -> FetchedPackage:
    package = package_from_entry(ApkIndexEntry(name=name, version=version, arch="aarch64"),
                                 feed="alpine", base_url="http://alpine", source="APKINDEX")
    return FetchedPackage(package, samples / "alpine-aarch64-3.13.4" / f"{name}-{version}.apk")


def _openwrt(samples: Path, folder: str, filename: str) -> FetchedPackage:
    path = samples / folder / filename
    control = get_backend("ipk").read_control_files(path)["control"].decode()
    fields = dict(line.split(": ", 1) for line in control.splitlines() if ": " in line)
    package = package_from_stanza({**fields, "Filename": filename, "Size": "1", "SHA256sum": "0" * 64},
                                  feed="openwrt", base_url="http://openwrt", source="Packages")
    return FetchedPackage(package, path)


def _rootfs() -> RootFS:
    rootfs = RootFS()
    rootfs.add_file("/etc/group", b"root:x:0:\nwww-data:x:33:\n")
    return rootfs


def test_alpine_scripts_are_performed_deferred_or_left_to_apk(samples):
    rootfs = _rootfs()
    packages = [_alpine(samples, "busybox", "1.32.1-r5"), _alpine(samples, "alpine-baselayout", "3.2.0-r8"),
                _alpine(samples, "musl", "1.2.2-r0")]
    decisions = {(d.package, d.script): d for d in handle_package_scripts(rootfs, packages, busybox_package="busybox",
                                                                          applets=299)}
    assert {k: d.action for k, d in decisions.items()} == {
        ("busybox", ".post-install"): "build", ("busybox", ".post-upgrade"): "not-run",
        ("busybox", ".trigger"): "not-run", ("alpine-baselayout", ".pre-install"): "build",
        ("alpine-baselayout", ".post-install"): "first-boot", ("alpine-baselayout", ".pre-upgrade"): "not-run",
        ("alpine-baselayout", ".post-upgrade"): "not-run",
    }
    assert "299 applet links" in decisions["busybox", ".post-install"].detail
    assert rootfs["/etc/group"].data == b"root:x:0:\nwww-data:x:33:\nshadow:x:42:\n"
    deferred = decisions["alpine-baselayout", ".post-install"]
    assert deferred.file == f"{PACKAGE_SCRIPTS}/001-alpine-baselayout.post-install"
    assert rootfs[deferred.file].mode == 0o755 and b"chmod 640 /etc/shadow" in rootfs[deferred.file].data
    # apk runs .post-install with the new version as $1.
    assert rootfs[f"{PACKAGE_SCRIPTS}/list"].data == b"001-alpine-baselayout.post-install 3.2.0-r8\n"


def test_busybox_links_are_not_claimed_for_a_busybox_fwgen_did_not_link(samples):
    rootfs = _rootfs()
    [decision] = [d for d in handle_package_scripts(rootfs, [_alpine(samples, "busybox", "1.32.1-r5")],
                                                    busybox_package=None, applets=0) if d.script == ".post-install"]
    assert decision.action == "first-boot"


def test_a_group_whose_gid_is_taken_stops_the_build_naming_the_script(samples):
    rootfs = RootFS()
    rootfs.add_file("/etc/group", b"root:x:0:\nvideo:x:42:\n")
    with pytest.raises(UserError, match=r"alpine-baselayout \.pre-install: addgroup shadow with gid 42, which group video"):
        handle_package_scripts(rootfs, [_alpine(samples, "alpine-baselayout", "3.2.0-r8")], busybox_package=None, applets=0)


def test_openwrt_postinst_is_deferred_with_configure_and_its_pkg_part_explained(samples):
    rootfs = _rootfs()
    packages = [_openwrt(samples, "openwrt-core-mvebu", "fwtool_2019-11-12-8f7fe925-1_arm_cortex-a9_vfpv3-d16.ipk"),
                _openwrt(samples, "openwrt-simonsmh-mt7621", "luci-app-chinadns_1.6.3-1_all.ipk")]
    decisions = {(d.package, d.script): d for d in handle_package_scripts(rootfs, packages, busybox_package=None, applets=0)}
    assert {k: d.action for k, d in decisions.items()} == {
        ("fwtool", "postinst"): "first-boot", ("fwtool", "prerm"): "not-run",
        ("luci-app-chinadns", "postinst"): "first-boot", ("luci-app-chinadns", "postinst-pkg"): "not-run",
        ("luci-app-chinadns", "postrm"): "not-run", ("luci-app-chinadns", "prerm"): "not-run",
    }
    assert "default_postinst" in decisions["luci-app-chinadns", "postinst-pkg"].detail
    assert rootfs[f"{PACKAGE_SCRIPTS}/list"].data == b"001-fwtool.postinst configure\n002-luci-app-chinadns.postinst configure\n"


def _run(root: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(RUNNER), command], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, FWGEN_ROOT=str(root)))


def test_first_boot_runner_reports_a_failing_script_and_runs_the_list_once(tmp_path):
    scripts = tmp_path / PACKAGE_SCRIPTS.lstrip("/")
    scripts.mkdir(parents=True)
    (scripts / "001-good.post-install").write_text(f'#!/bin/sh\necho "good got $1" >> {tmp_path}/ran\n')
    (scripts / "002-bad.postinst").write_text(f'#!/bin/sh\necho "bad got $1" >> {tmp_path}/ran\nexit 3\n')
    for script in scripts.iterdir():
        script.chmod(0o755)
    (scripts / "list").write_text("001-good.post-install 1.0-r0\n002-bad.postinst configure\n")

    assert _run(tmp_path, "status").returncode == 1  # listed, never run
    first = _run(tmp_path, "run")
    assert "fwgen: package script 002-bad.postinst FAILED (exit status 3)" in first.stdout
    assert "fwgen: package scripts: 1 ok, 1 failed" in first.stdout
    status = _run(tmp_path, "status")
    assert status.returncode == 1
    assert status.stdout == "001-good.post-install: ok\n002-bad.postinst: FAILED (exit status 3)\n"
    _run(tmp_path, "run")  # once only
    assert (tmp_path / "ran").read_text() == "good got 1.0-r0\nbad got configure\n"
    log = (tmp_path / "var/log/package-scripts.log").read_text()
    assert "== 002-bad.postinst configure" in log
    assert "== 001-good.post-install 1.0-r0" in log


def test_a_board_can_say_a_packages_scripts_are_not_run_and_why(samples):
    """rpi-zero's raspi-firmware (its scripts manage a Debian host's /boot/firmware) is the case;
    the real alpine-baselayout stands in for it here: nothing of it is staged or performed."""
    from fwgen.config import load_board

    rootfs = _rootfs()
    why = "its scripts manage the host it was made for"
    decisions = handle_package_scripts(rootfs, [_alpine(samples, "alpine-baselayout", "3.2.0-r8")],
                                       busybox_package=None, applets=0, skip={"alpine-baselayout": why})
    assert {d.script for d in decisions} == {".pre-install", ".post-install", ".pre-upgrade", ".post-upgrade"}
    assert {(d.action, d.detail) for d in decisions} == {("not-run", f"the board's skip_package_scripts: {why}")}
    assert rootfs["/etc/group"].data == b"root:x:0:\nwww-data:x:33:\n"  # its addgroup not performed either
    assert not [e.path for e in rootfs if e.path.startswith(PACKAGE_SCRIPTS)]
    assert "boot partition" in load_board("rpi-zero").skip_package_scripts["raspi-firmware"]
