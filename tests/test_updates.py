"""Firmware updates on an A/B board, end to end under QEMU through Debian's real U-Boot
(issue 14, the device side): qemu-aarch64-ab built three times from temporary copies (v1;
v2 with a changed overlay; v3 whose health check fails), each trusting a key made here.

One QEMU machine on one disk goes through the whole story, in the order of the tests below:
v1 boots from slot A and a file is written under /etc; v2 is downloaded by the device over
HTTP from 127.0.0.1 and installed into slot B; the device reboots into v2 with the file kept.
Damaged, untrusted and foreign bundles are refused without a byte of either slot changing.
v3 fails its health check on each of its trial boots and U-Boot returns to v2 by itself.
QEMU killed while slot A is being written: the next boot comes up on slot B all the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from buildutil import REPO, check_sboms, run_fwgen
from construct import Array
from localhttp import Server

from fwgen import usign
from fwgen.boot import READY_MARKER, boot_spec_for
from fwgen.config import load_board
from fwgen.images.disk import GPT_ENTRY, SECTOR
from fwgen.qemu import Machine

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]

BOARD = "qemu-aarch64-ab"
TRIALS = 3
HEALTH_TIMEOUT = 5
SETTING = "/etc/update-test.conf"
RELEASE_NOTE = "/usr/share/update-test/release"  # only v2 has it: proof the new root runs
SLOT_PARTS = ("fit-A", "fit-B", "root-A", "root-B")


@pytest.fixture(scope="module")
def keys(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """Key pairs from `fwgen keygen`: name -> the secret key's path (NAME.pub beside it)."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("trusted", "untrusted"):
        made = run_fwgen("keygen", str(folder / name), cache=cache_dir)
        assert made.returncode == 0, made.stderr
    return {name: folder / f"{name}.key" for name in ("trusted", "untrusted")}


def key_id(secret: Path) -> str:
    return usign.load_secret_key(secret).key_id


def write_board(folder: Path, version: str, key: Path, **update) -> Path:
    """A copy of qemu-aarch64-ab in `folder` at `version`, trusting `key`'s public half."""
    board = yaml.safe_load((REPO / "boards" / f"{BOARD}.yaml").read_text())
    board["version"] = version
    board["update"].update(keys=[str(key.with_suffix(".pub"))], health_timeout=HEALTH_TIMEOUT, **update)
    path = folder / f"{BOARD}-v{version}.yaml"
    path.write_text(yaml.safe_dump(board, sort_keys=False))
    return path


def add_release_overlay(folder: Path, board_file: Path) -> None:
    """v2's changed overlay: a file only the new root filesystem has."""
    overlay = folder / "overlays" / "update-test-release"
    (overlay / "files" / Path(RELEASE_NOTE).parent.relative_to("/")).mkdir(parents=True)
    (overlay / "files" / RELEASE_NOTE.lstrip("/")).write_text("release 2\n")
    (overlay / "overlay.yaml").write_text("description: what v2 adds\ndepends: [base]\n")
    board = yaml.safe_load(board_file.read_text())
    board["overlays"].append("update-test-release")
    board_file.write_text(yaml.safe_dump(board, sort_keys=False))


@dataclass(frozen=True)
class Firmware:
    version: str
    board_file: Path
    out: Path  # the build folder, out/<board>

    @property
    def bundle(self) -> bytes:
        """out/<board>/update.bundle, signed by the build (fwgen build --sign)."""
        return (self.out / "update.bundle").read_bytes()

    def part(self, name: str) -> bytes:
        with tarfile.open(self.out / "update.bundle") as tar:
            return tar.extractfile(name).read()  # type: ignore[union-attr]


def repack(bundle: bytes, *, compatible: list[str] | None = None, parts: dict[str, bytes] | None = None,
           signed: bool = True) -> bytes:
    """`bundle` with other compatible names or other part contents (metadata.json following
    them) and/or without its signature, members in the bundle's order and headers; `fwgen
    sign` then signs it."""
    parts = parts or {}
    with tarfile.open(fileobj=io.BytesIO(bundle)) as old:
        members = [(m, old.extractfile(m).read()) for m in old.getmembers()]  # type: ignore[union-attr]
    contents = {m.name: parts.get(m.name, data) for m, data in members}
    metadata = json.loads(contents["metadata.json"])
    metadata["compatible"] = compatible or metadata["compatible"]
    for part in metadata["parts"]:
        data = contents[part["file"]]
        part.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    contents["metadata.json"] = (json.dumps(metadata, sort_keys=True, indent=1) + "\n").encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as new:
        for member, _ in members:
            if member.name == "metadata.json.sig" and not signed:
                continue
            member.size = len(contents[member.name])
            new.addfile(member, io.BytesIO(contents[member.name]))
    return out.getvalue()


def signed_with(bundle: bytes, key: Path, folder: Path, cache_dir: Path) -> bytes:
    """`bundle` signed by `fwgen sign --key KEY`."""
    path = folder / "to-sign.bundle"
    path.write_bytes(bundle)
    result = run_fwgen("sign", str(path), "--key", str(key), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return path.read_bytes()


def build_all(boards: dict[str, Path], folder: Path, key: Path, cache_dir: Path) -> dict[str, Firmware]:
    """`fwgen build --sign KEY` of every board, two at a time (each build is one process)."""
    started = time.monotonic()
    running = {}
    built = {}
    for version, board_file in boards.items():
        out = folder / f"out-v{version}"
        running[version] = subprocess.Popen(
            [sys.executable, "-m", "fwgen.cli", "build", "--board", str(board_file), "--out", str(out),
             "--sign", str(key)], cwd=REPO, env=dict(os.environ, FWGEN_CACHE=str(cache_dir)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        built[version] = Firmware(version, board_file, out / BOARD)
        if len(running) == 2 or version == list(boards)[-1]:
            for done in list(running):
                output = running.pop(done).communicate(timeout=900)[0]
                assert (built[done].out / "update.bundle").is_file(), output
    print(f"v{', v'.join(boards)} built in {time.monotonic() - started:.1f} s")
    return built


@pytest.fixture(scope="module")
def firmware(keys, tmp_path_factory, cache_dir) -> dict[str, Firmware]:
    """v1, v2 (a changed overlay) and v3 (a health check that fails), built once."""
    folder = tmp_path_factory.mktemp("ab")
    boards = {"1": write_board(folder, "1", keys["trusted"]),
              "2": write_board(folder, "2", keys["trusted"]),
              "3": write_board(folder, "3", keys["trusted"], health="test -e /nonexistent-health-flag")}
    add_release_overlay(folder, boards["2"])
    return build_all(boards, folder, keys["trusted"], cache_dir)


@pytest.fixture(scope="module")
def server():
    served = Server()
    yield served
    served.close()


def guest_url(server: Server, path: str) -> str:
    """The URL the guest reaches the test server at: QEMU's user network maps 10.0.2.2 to the
    host's 127.0.0.1."""
    return server.url.replace("127.0.0.1", "10.0.2.2") + path


class Device:
    """The emulated board across reboots: one disk, QEMU started again after each reset
    (QEMU runs with -no-reboot, so a reboot ends it)."""

    def __init__(self, firmware: Firmware, workdir: Path, factor: float) -> None:
        spec = boot_spec_for(load_board(firmware.board_file), firmware.out, fresh_disk=True)
        self.disk = spec.drives[0]
        self.machine = Machine(spec, workdir, timeout_factor=factor)
        self.boots = 0

    def start(self) -> float:
        """Power on and wait for the ready line: the seconds it took."""
        started = time.monotonic()
        self.machine.start()
        self.boots += 1
        self.machine.wait_for(READY_MARKER, self.machine.spec.ready_timeout)
        return time.monotonic() - started

    def run(self, command: str, timeout: float = 60) -> str:
        status, output = self.machine.run(command, timeout)
        assert status == 0, f"{command!r} exited {status}: {output}"
        return output

    def reset_by_itself(self, timeout: float = 300) -> None:
        self.machine.wait_for_exit(timeout)

    def console(self, since: int = 0) -> str:
        """What the guest printed since power-on (every boot of the test), from offset `since`."""
        return self.machine.console_log.read_text(errors="replace")[since:]

    def partitions(self) -> dict[str, bytes]:
        """The bytes of each slot partition and of the state partition, as the guest wrote them."""
        data = self.disk.read_bytes()
        entries = Array(128, GPT_ENTRY).parse(data[2 * SECTOR:34 * SECTOR])
        found = {}
        for entry in entries:
            name = entry.partition_name.decode("utf-16-le").rstrip("\0")
            if name:
                found[name] = data[entry.starting_lba * SECTOR:(entry.ending_lba + 1) * SECTOR]
        return found

    def counters(self) -> str:
        return self.partitions()["state"][:SECTOR].rstrip(b"\0").decode().rstrip("\n")


@pytest.fixture(scope="module")
def device(firmware, tmp_path_factory):
    factor = float(os.environ.get("FWGEN_TIMEOUT_FACTOR", "1"))
    board = Device(firmware["1"], tmp_path_factory.mktemp("device"), factor)
    yield board
    board.machine.kill()


def status_of(device: Device) -> str:
    return device.run("fwupdate status")


def test_v1_boots_and_v2_installed_over_http_boots_with_the_settings_kept(device, firmware, keys, server):
    ready = device.start()
    status = status_of(device)
    assert "running: version 1, slot A" in status
    assert "slot A: version 1, good" in status and "slot B: version -, empty, 0 boot attempts left" in status
    device.run(f"echo 'kept across updates' > {SETTING} && sync")

    bundle = firmware["2"].bundle
    server.serve("/v2.bundle", bundle)
    started = time.monotonic()
    output = device.run(f"fwupdate install {guest_url(server, '/v2.bundle')} --no-reboot", timeout=300)
    install_seconds = time.monotonic() - started
    assert f"signature by key {key_id(keys['trusted'])} verified" in output
    assert re.search(r"installed version 2 into slot B in \d+ s: it boots next \(3 attempts\)", output), output
    assert device.counters() == "BOOT_A_LEFT=3\nBOOT_B_LEFT=3\nBOOT_ORDER=B A"
    written = device.partitions()
    fit, root = firmware["2"].part("fit.itb"), firmware["2"].part("rootfs.squashfs")
    assert written["fit-B"][:len(fit)] == fit and written["root-B"][:len(root)] == root

    device.machine.send("reboot\n")
    device.reset_by_itself()
    started = time.monotonic()
    back = device.start()
    device.machine.wait_for("passed its health check: marked good", 120, from_start=True)
    confirmed = time.monotonic() - started
    console = device.console()
    assert "fwgen: booting slot B (order B A; attempts left: A 3, B 2)" in console
    assert "fwgen-init: slot B of the A/B disk: root /dev/vda6" in console
    assert device.run(f"cat {SETTING}") == "kept across updates"
    assert device.run(f"cat {RELEASE_NOTE}") == "release 2"
    assert device.run("grep -o 'fwgen.slot=[AB]' /proc/cmdline") == "fwgen.slot=B"
    status = status_of(device)
    assert "running: version 2, slot B" in status
    assert "slot B: version 2, good, 3 boot attempts left, booted" in status
    assert "slot A: version 1, good" in status and "fell back" not in status
    print(f"bundle v2 {len(bundle):,} bytes; v1 ready {ready:.1f} s; install (download, verify, write) "
          f"{install_seconds:.1f} s; reboot into v2 ready {back:.1f} s, marked good {confirmed:.1f} s")


def refusal(device: Device, server: Server, name: str, bundle: bytes) -> str:
    server.serve(f"/{name}", bundle)
    status, output = device.machine.run(f"fwupdate install {guest_url(server, '/' + name)} --no-reboot", 300)
    assert status == 1, output
    [line] = [line for line in output.splitlines() if line.startswith("fwupdate: refused: ")]
    return line


def test_damaged_untrusted_unsigned_and_foreign_bundles_are_refused_before_anything_is_written(
        device, firmware, keys, server, tmp_path, cache_dir):
    before = device.partitions()
    good = firmware["3"].bundle
    flipped = bytearray(good)
    flipped[good.index(firmware["3"].part("rootfs.squashfs")[:4096]) + 100_000] ^= 0x01
    lines = {
        "flipped": refusal(device, server, "flipped.bundle", bytes(flipped)),
        "untrusted": refusal(device, server, "untrusted.bundle",
                             signed_with(good, keys["untrusted"], tmp_path, cache_dir)),
        "unsigned": refusal(device, server, "unsigned.bundle", repack(good, signed=False)),
        "foreign": refusal(device, server, "foreign.bundle", signed_with(
            repack(good, compatible=["qemu-armv7-ab"], signed=False), keys["trusted"], tmp_path, cache_dir)),
    }
    assert re.search(r"part rootfs: rootfs\.squashfs has sha256 [0-9a-f]{64}, metadata\.json says [0-9a-f]{64}: "
                     r"the bundle is damaged", lines["flipped"])
    assert (f"the bundle is signed by key {key_id(keys['untrusted'])}, which this device does not trust"
            in lines["untrusted"])
    assert "is not signed (no metadata.json.sig)" in lines["unsigned"]
    assert f"a bundle for qemu-armv7-ab (board {BOARD}), and this device is {BOARD}" in lines["foreign"]
    after = device.partitions()
    for name in (*SLOT_PARTS, "state"):
        assert after[name] == before[name], f"partition {name} changed"
    assert "running: version 2, slot B" in status_of(device)
    print("\n".join(f"{case}: {line}" for case, line in lines.items()))


def test_v3_failing_its_health_check_is_tried_three_times_then_the_device_is_back_on_v2(
        device, firmware, keys, server):
    server.serve("/v3.bundle", firmware["3"].bundle)
    mark = len(device.console())
    device.machine.send(f"fwupdate install {guest_url(server, '/v3.bundle')}\n")
    device.machine.wait_for("installed version 3 into slot A", 300)
    started = time.monotonic()
    device.reset_by_itself()
    for attempt in range(1, TRIALS + 1):
        device.start()
        device.machine.wait_for(f"failed its health check for {HEALTH_TIMEOUT} s on trial boot {attempt} of "
                                f"{TRIALS}: rebooting", 120, from_start=True)
        device.reset_by_itself()
    device.start()
    device.machine.wait_for("slot A (version 3) did not come up in its 3 boot attempts: the device came back on "
                            "slot B (version 2)", 60, from_start=True)
    rollback = time.monotonic() - started
    console = device.console(mark)
    assert [left for left in re.findall(r"fwgen: booting slot A \(order A B; attempts left: A (\d)", console)] == \
        ["2", "1", "0"]
    assert "fwgen: booting slot B (order A B; attempts left: A 0, B 2)" in console
    status = status_of(device)
    assert "running: version 2, slot B" in status
    assert "fell back from slot A (version 3): it did not come up in its 3 boot attempts" in status
    assert "slot A: version 3, failed (did not come up)" in status
    assert device.run(f"cat {SETTING}") == "kept across updates"
    print(f"rollback: from the reboot after installing v3 to v2 running again {rollback:.1f} s "
          f"({TRIALS} trial boots with a {HEALTH_TIMEOUT} s health timeout)")


def test_qemu_killed_while_the_inactive_slot_is_written_comes_up_on_the_old_slot(
        device, firmware, keys, server, tmp_path, cache_dir):
    # Slot A holds v3 already, and every version's FIT is the same: v3's FIT with 4 MiB of
    # random bytes after it (U-Boot reads a FIT's size from its header) makes the write long
    # enough to kill it midway and shows on disk how far it got.
    fit = firmware["3"].part("fit.itb") + os.urandom(4 << 20)
    bundle = signed_with(repack(firmware["3"].bundle, parts={"fit.itb": fit}, signed=False), keys["trusted"],
                         tmp_path, cache_dir)
    server.serve("/v3-long.bundle", bundle)
    before = device.partitions()
    device.machine.send(f"fwupdate install {guest_url(server, '/v3-long.bundle')}\n")
    device.machine.wait_for("writing fit.itb", 300)
    device.machine.kill()
    after = device.partitions()
    assert after["fit-A"][:len(fit)] != fit, "the write finished before QEMU was killed"
    assert device.counters() == "BOOT_A_LEFT=0\nBOOT_B_LEFT=3\nBOOT_ORDER=A B"
    for name in ("fit-B", "root-B"):
        assert after[name] == before[name]
    mark = len(device.console())
    device.start()
    assert "fwgen: booting slot B (order A B; attempts left: A 0, B 2)" in device.console(mark)
    status = status_of(device)
    assert "running: version 2, slot B" in status
    assert "slot A: version 3, incomplete (an install into it did not finish)" in status
    assert device.run(f"cat {SETTING}") == "kept across updates"


def test_the_ab_boards_sboms_validate_and_describe_the_update_bundle(firmware):
    """The SBOM check (tests/buildutil.check_sboms) on this module's v1 build: the bundle is
    one of the images, with its SHA-256."""
    spdx, _ = check_sboms(firmware["1"].out)
    images = {p["name"] for p in spdx["packages"] if p["SPDXID"].startswith("SPDXRef-Image-")}
    assert {"update.bundle", "disk.img", "u-boot.bin"} <= images
