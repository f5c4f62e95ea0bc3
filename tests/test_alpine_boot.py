"""boards/qemu-aarch64-alpine.yaml built from the real, signed Alpine 3.13.4 aarch64 packages
of ../shared/samples, served on 127.0.0.1 in Alpine's repository layout
(v3.13/main/aarch64/APKINDEX.tar.gz), and booted once under QEMU with its checks: Alpine's
own BusyBox with the applet links its .post-install would make, alpine-baselayout's /etc
under fwgen's overlays, package scripts performed at build time or run at first boot, and apk
working on the device (`apk add` from the host's repository, reached as 10.0.2.2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from buildutil import REPO, check_sboms, run_fwgen
from feedgen import serve

from fwgen.images.cpio import read_initramfs

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]

BOARD = "qemu-aarch64-alpine"
SAMPLE = "alpine-aarch64-3.13.4"
# The guest reaches the host's 127.0.0.1 as 10.0.2.2 on QEMU's user network.
GUEST_HOST = "10.0.2.2"
# Checks of what only the test's repository holds: musl-utils is in the sample but not in
# the board's package list, so apk on the device fetches it (and scanelf, its dependency)
# from the host and checks its signature with the keys in /etc/apk/keys.
EXTRA_CHECKS = [
    {"run": "apk add musl-utils >/dev/null 2>&1; echo $?; apk info -e musl-utils scanelf; ls /usr/bin/scanelf /usr/bin/getent | cat",
     "name": "apk add from the host's repository installs musl-utils and scanelf",
     "expect": "0\nmusl-utils\nscanelf\n/usr/bin/getent\n/usr/bin/scanelf", "timeout": 120},
    {"run": "apk audit --system /usr/bin /usr/lib /lib /sbin; echo status $?",
     "name": "apk audit: after apk add, the files apk installed are as their packages hold them",
     "expect": "status 0"},
]


def write_board_copy(folder: Path, url: str) -> Path:
    """The shipped board with its alpine feed at the served sample and the same repository,
    as the guest reaches it, for /etc/apk/repositories."""
    board = yaml.safe_load((REPO / "boards" / f"{BOARD}.yaml").read_text())
    [alpine] = [feed for feed in board["feeds"] if feed["type"] == "apk"]
    alpine["url"] = f"{url}/v3.13"
    alpine["device_url"] = f"{url.replace('127.0.0.1', GUEST_HOST)}/v3.13"
    board["checks"] += EXTRA_CHECKS
    path = folder / f"{BOARD}.yaml"
    path.write_text(json.dumps(board, indent=2))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def booted(samples, tmp_path_factory, cache_dir):
    """One build and one boot, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("alpine")
    repo = tmp / "repo" / "v3.13" / "main"
    repo.mkdir(parents=True)
    (repo / "aarch64").symlink_to(samples / SAMPLE)
    out = tmp / "out"
    with serve(tmp / "repo") as url:
        board = write_board_copy(tmp, url)
        started = time.monotonic()
        built = run_fwgen("build", "--board", str(board), "--out", str(out), cache=cache_dir)
        build_seconds = time.monotonic() - started
        assert built.returncode == 0, built.stdout + built.stderr
        booted = run_fwgen("boot", "--board", str(board), "--out", str(out), "--json", cache=cache_dir)
    assert booted.returncode == 0 or booted.stdout, booted.stderr
    report = json.loads(booted.stdout)
    manifest = json.loads((out / BOARD / "manifest.json").read_text())
    console = (out / ".state" / BOARD / "console.log").read_text(errors="replace")
    print(f"{BOARD}: build {build_seconds:.1f} s, ready after {report['ready_seconds']:.1f} s, "
          f"sizes { {n: o['size'] for n, o in manifest['outputs'].items()} }")
    return report, manifest, console, out / BOARD


def test_alpine_board_boots_and_passes_its_checks(booted):
    report, _, console, _ = booted
    checks = {c["name"]: c for c in report["checks"]}
    failed = {name: c for name, c in checks.items() if not c["passed"]}
    assert not failed, failed
    assert {"run: apk --version", "run: apk info -e musl busybox apk-tools", "http: / (port 80)", "service: httpd",
            *(c["name"] for c in EXTRA_CHECKS)} <= set(checks)
    assert "fwgen: ready" in console


def test_userland_is_alpines(booted):
    _, manifest, _, folder = booted
    packages = {p["name"]: p for p in manifest["inputs"]["packages"]}
    assert {p["feed"] for p in packages.values()} == {"alpine"}
    assert {"musl", "busybox", "alpine-baselayout", "apk-tools", "alpine-keys", "ssl_client"} <= set(packages)
    assert manifest["inputs"]["kernel"]["feed"] == "debian"
    assert manifest["inputs"]["busybox"] == {"package": "busybox"}
    files = manifest["files"]
    assert files["/bin/busybox"] == "apk:busybox"
    assert files["/etc/services"] == "apk:alpine-baselayout"  # Alpine's /etc under the overlays
    assert files["/etc/inittab"] == "overlay:base"
    members = {m.name: m for m in read_initramfs(folder / "initramfs.cpio.gz")}
    assert members["bin/ls"].data == b"/bin/busybox"  # a symlink's data is its target


def test_sboms_name_alpines_packages_with_the_licences_its_index_states(booted):
    _, manifest, _, folder = booted
    spdx, _ = check_sboms(folder)
    packages = {p["name"]: p for p in spdx["packages"]}
    assert packages["busybox"]["licenseDeclared"] == "GPL-2.0-only"  # Alpine's BusyBox: its L:
    assert packages["musl"]["licenseDeclared"] == "MIT"
    assert packages["ca-certificates-bundle"]["licenseDeclared"] == "MIT AND MPL-2.0"
    purl = packages["musl"]["externalRefs"][0]["referenceLocator"]
    assert purl == "pkg:apk/alpine/musl@1.2.2-r0?arch=aarch64"
    records = {p["name"]: p for p in manifest["inputs"]["packages"]}
    # apk-tools' D: names musl>=1.2 and so: libraries: the packages the resolver chose for them.
    assert {"musl", "libcrypto1.1", "libssl1.1", "zlib"} <= set(records["apk-tools"]["depends"])
    relations = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in spdx["relationships"]}
    assert (packages["apk-tools"]["SPDXID"], "DEPENDS_ON", packages["musl"]["SPDXID"]) in relations
    kernel = manifest["inputs"]["kernel"]
    assert kernel["purl"].startswith("pkg:deb/debian/linux-image-")
    assert packages[kernel["name"]]["licenseDeclared"].startswith("GPL-2.0-only AND ")


def test_every_package_script_is_accounted_for(booted):
    report, manifest, console, _ = booted
    decisions = {(d["package"], d["script"]): d for d in manifest["package_scripts"]}
    # Every script of every installed package, and nothing else.
    assert set(decisions) == {
        ("busybox", ".post-install"), ("busybox", ".post-upgrade"), ("busybox", ".trigger"),
        ("alpine-baselayout", ".pre-install"), ("alpine-baselayout", ".post-install"),
        ("alpine-baselayout", ".pre-upgrade"), ("alpine-baselayout", ".post-upgrade"),
    }
    assert decisions["busybox", ".post-install"]["action"] == "build"
    assert "applet links" in decisions["busybox", ".post-install"]["detail"]
    assert decisions["alpine-baselayout", ".pre-install"]["action"] == "build"
    assert decisions["alpine-baselayout", ".pre-install"]["detail"] == "addgroup: group shadow (42) added in /etc/group"
    deferred = decisions["alpine-baselayout", ".post-install"]
    assert deferred["action"] == "first-boot" and deferred["file"].startswith("/usr/lib/fwgen/package-scripts/")
    assert {d["action"] for k, d in decisions.items() if "upgrade" in k[1] or k[1] == ".trigger"} == {"not-run"}
    # The deferred script ran at first boot: its chown root:shadow needs the group the
    # build-time equivalent added, and its chmod 640 shows.
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["shadow is private and root is locked"]["passed"]
    assert "fwgen: package scripts: 1 ok, 0 failed" in console
