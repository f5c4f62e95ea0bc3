"""opkg's status and info files as fwgen writes them for the real OpenWrt 23.05.2 mvebu
packages of ../shared/samples, read back the way opkg-lede reads them (libopkg/pkg_parse.c:
`Status: %s %s %s` against pkg.c's want/flag/state words, ` <path> <md5>` Conffiles lines,
Installed-Time through strtoul; a .list line per file, names ending in '/' skipped). opkg
itself is not in the samples, so it does not run here."""

from __future__ import annotations

import hashlib

import pytest

from fwgen.fetch import get_backend
from fwgen.fetch.ipk import parse_relations
from fwgen.fetch.opkgdb import INFO, STATUS, InstalledIpk, write_opkg_database
from fwgen.rootfs import EntryType, RootFS

FEED = "openwrt-core-mvebu"
WANT = {"unknown", "install", "deinstall", "purge"}
FLAGS = {"ok", "reinstreq", "hold", "replace", "noprune", "prefer", "obsolete", "user"}
STATES = {"not-installed", "unpacked", "half-configured", "installed", "half-installed", "config-files",
          "post-inst-failed", "removal-failed"}
REQUESTED = {"base-files", "fwtool", "uboot-envtools"}


def parse_status_as_opkg(text: str) -> dict[str, dict]:
    """The status file as opkg's pkg_parse_from_stream reads it, strictly."""
    packages: dict[str, dict] = {}
    for stanza in filter(None, text.split("\n\n")):
        pkg: dict = {"conffiles": []}
        reading_conffiles = False
        for line in stanza.splitlines():
            if line.startswith(" ") and reading_conffiles:
                path, md5 = line.split()  # sscanf("%1023s %84s") must find two words
                pkg["conffiles"].append((path, md5))
                continue
            reading_conffiles = False
            field, sep, value = line.partition(": ")
            assert sep or line == "Conffiles:", line
            if line == "Conffiles:":
                reading_conffiles = True
            elif field == "Status":
                want, flag, state = value.split()  # sscanf("Status: %s %s %s") == 3
                assert want in WANT and set(flag.split(",")) <= FLAGS and state in STATES, value
                pkg["status"] = (want, flag, state)
            elif field == "Installed-Time":
                pkg[field] = int(value, 0)
            elif field in ("Depends", "Conflicts"):
                pkg[field] = parse_relations(value, f"status: {field}")
            else:
                pkg[field] = value
        packages[pkg["Package"]] = pkg
    return packages


@pytest.fixture(scope="module")
def written(samples):
    backend = get_backend("ipk")
    packages = []
    for path in sorted((samples / FEED).glob("*.ipk")):
        packages.append(InstalledIpk(backend.read_control_files(path), list(backend.read_entries(path))))
    rootfs = RootFS()
    write_opkg_database(rootfs, packages, requested=REQUESTED, installed_time=1700002853)
    return rootfs, {p.name: p for p in packages}


def test_status_parses_as_opkg_reads_it(written):
    rootfs, packages = written
    status = parse_status_as_opkg(rootfs[STATUS].data.decode())
    assert set(status) == set(packages) and len(status) == 8
    for name, package in packages.items():
        entry = status[name]
        assert entry["Version"] == package.control["Version"]
        assert entry["Architecture"] == "arm_cortex-a9_vfpv3-d16"
        assert entry["Installed-Time"] == 1700002853
        if name in REQUESTED:
            assert entry["status"] == ("install", "user", "installed") and "Auto-Installed" not in entry
        else:
            assert entry["status"] == ("install", "ok", "installed") and entry["Auto-Installed"] == "yes"
    # base-files depends on netifd, usign... as its control says; the kmod on the kernel's hash.
    assert [g[0].name for g in status["base-files"]["Depends"]][:2] == ["libc", "netifd"]
    [kernel] = [g[0] for g in status["kmod-lib-crc8"]["Depends"] if g[0].name == "kernel"]
    assert kernel.op == "=" and kernel.version == "5.15.137-1-40d241266c049468fd1eeac34d3457e0"


def test_conffiles_carry_the_md5_of_what_the_package_installs(written):
    rootfs, packages = written
    status = parse_status_as_opkg(rootfs[STATUS].data.decode())
    conffiles = status["base-files"]["conffiles"]
    listed = packages["base-files"].control_files["conffiles"].decode().split()
    assert [path for path, _ in conffiles] == [p for p in listed if any(e.path == p for e in packages["base-files"].entries)]
    assert len(conffiles) > 5
    content = {e.path: e.data for e in packages["base-files"].entries}
    for path, md5 in conffiles:
        assert hashlib.md5(content[path]).hexdigest() == md5


def test_info_lists_files_and_keeps_the_control_files(written):
    rootfs, packages = written
    for name, package in packages.items():
        lines = rootfs[f"{INFO}/{name}.list"].data.decode().splitlines()
        kept = [line for line in lines if not line.endswith("/")]  # as file_hash_set_file_owner skips
        assert kept == lines and all(line.startswith("/") for line in lines)
        assert set(lines) == {e.path for e in package.entries if e.type is not EntryType.DIR and e.path != "/"}
        assert rootfs[f"{INFO}/{name}.control"].data == package.control_files["control"]
    assert "/lib/ld-musl-armhf.so.1" in rootfs[f"{INFO}/libc.list"].data.decode()
    assert rootfs[f"{INFO}/libpthread.list"].data == b""  # only ./ and ./lib in its data
    postinst = rootfs[f"{INFO}/base-files.postinst"]
    assert postinst.mode == 0o755 and postinst.data.startswith(b"#!/bin/sh")
