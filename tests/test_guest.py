"""The guest's scripts (overlays/base/files) use the names fwgen/guest.py declares.

A shell script cannot import the contract, so these tests read the scripts: renaming a
marker, a path or a boot.conf variable on one side only fails here, not at the next boot.
"""

from __future__ import annotations

import re

import pytest
from buildutil import REPO

from fwgen import guest
from fwgen.images.uimage import IH_MAGIC

BASE = REPO / "overlays" / "base" / "files"


def script(path: str) -> str:
    """The text of a base-overlay file, by its path in the guest."""
    return (BASE / path.lstrip("/")).read_text()


def conf_keys(conf: str) -> tuple[str, ...]:
    return tuple(line.split("=", 1)[0] for line in conf.splitlines() if not line.startswith("#"))


def test_boot_conf_sets_exactly_the_declared_variables():
    assert conf_keys(guest.disk_boot_conf("b", "/dev/vda1", "/dev/vda2")) == guest.DISK_CONF_KEYS
    assert conf_keys(guest.flash_boot_conf("b", "/dev/vda", 65536)) == guest.FLASH_CONF_KEYS
    assert f"DATA_TYPE={guest.DATA_FS_TYPE}\nRESET_MARKER={guest.RESET_MARKER}\n" in guest.disk_boot_conf("b", "r", "")


@pytest.mark.parametrize("key", sorted({*guest.DISK_CONF_KEYS, *guest.FLASH_CONF_KEYS, *guest.AB_CONF_KEYS}))
def test_init_sources_boot_conf_and_reads_every_variable(key):
    init = script(guest.INIT)
    assert f"[ -f {guest.BOOT_CONF} ] && . {guest.BOOT_CONF}" in init
    # $KEY, ${KEY}, or a bare KEY inside $(( )) arithmetic
    assert re.search(rf"(\$\{{?|\$\(\(.*\b){key}\b", init), f"/init never reads {key} from {guest.BOOT_CONF}"


def test_init_loads_the_module_list_and_mounts_root_and_overlay():
    init = script(guest.INIT)
    assert f"done < {guest.MODULE_LIST}" in init
    assert f'"$ROOT" {guest.ROOT_MOUNT} ' in init
    assert f"lowerdir={guest.ROOT_MOUNT},upperdir={guest.DATA_MOUNT}/upper" in init
    assert f'[ -e "{guest.DATA_MOUNT}/$RESET_MARKER" ]' in init
    assert f"-eq $((0x{IH_MAGIC:08x}))" in init  # the uImage at the start of a router's firmware


def test_factory_reset_writes_the_marker_init_looks_for():
    reset = script("/sbin/factory-reset")
    assert f". {guest.BOOT_CONF}" in reset
    assert f'"{guest.DATA_MOUNT}/$RESET_MARKER"' in reset


def test_rcs_runs_rc_scripts_and_services_then_prints_the_ready_marker():
    rcs = script("/etc/init.d/rcS")
    assert f"for script in {guest.RC_DIR}/S*" in rcs
    assert f"{guest.SERVICE_HELPER} need $(ls {guest.SERVICE_DIR})" in rcs
    assert rcs.rstrip().splitlines()[-1].startswith(f'echo "{guest.READY_MARKER}')


def test_service_helper_and_init_are_where_the_contract_says():
    # overlay.py writes `fwgen-service need NAME...` and `fwgen-service as USER CMD...` into run scripts
    commands = set(re.findall(r"^(\w+)\) ", script(guest.SERVICE_HELPER), re.M))
    assert {"supervise", "need", "as"} <= commands
    assert script(guest.INIT).startswith("#!/bin/sh")
    assert set(guest.BOOT_INITRAMFS_PATHS) >= {guest.INIT, guest.MODULE_LIST, guest.BOOT_CONF,
                                                guest.ROOT_MOUNT, guest.DATA_MOUNT}


def test_first_boot_runner_reads_where_the_build_puts_the_deferred_scripts():
    # fwgen/scripts.py stages scripts and their `list` in PACKAGE_SCRIPTS; rc.d starts the runner.
    runner = script(guest.PACKAGE_SCRIPTS_RUNNER)
    assert f"DIR=$FWGEN_ROOT{guest.PACKAGE_SCRIPTS}\n" in runner and "LIST=$DIR/list\n" in runner
    rc = script(f"{guest.RC_DIR}/S01package-scripts")
    assert f"exec {guest.PACKAGE_SCRIPTS_RUNNER} run" in rc
