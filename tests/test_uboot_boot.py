"""qemu-aarch64-uboot and qemu-armv7-uboot: Debian's real U-Boot (u-boot-qemu, qemu_arm64 and
qemu_arm) started as QEMU's -bios finds boot.scr on the disk's FAT partition, loads fwgen's
FIT, checks its sha256 hashes and boots Linux; the board's checks pass as on the -kernel disk
boards. A flipped byte in the FIT's kernel makes U-Boot refuse it, and `fwgen boot` says so as
soon as U-Boot does."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time

import pytest
from buildutil import run_fwgen

from fwgen.bootloader import FIT_ARCH
from fwgen.bootstate import state_folder
from fwgen.config import load_board
from fwgen.images.fit import read_fit
from fwgen.images.uimage import multi_files, read_uimage

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]

BOARDS = ["qemu-aarch64-uboot", "qemu-armv7-uboot"]
FAT_OFFSET = 4 << 20  # partition 1 starts at 4 MiB (the SD-card layout's alignment)


@pytest.fixture(scope="module", params=BOARDS)
def built(request, tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("uboot")
    result = run_fwgen("build", "--board", request.param, "--out", str(out), cache=cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / request.param


def test_build_writes_fit_script_and_uboot_recorded_in_the_manifest(built):
    board = load_board(built.name)
    spec = board.uboot
    manifest = json.loads((built / "manifest.json").read_text())
    outputs = manifest["outputs"]
    assert {"fit", "boot-script", "u-boot", "disk", "initramfs", "kernel"} <= set(outputs)
    loader = manifest["inputs"]["bootloader"]
    assert loader["package"]["name"] == "u-boot-qemu" and loader["package"]["version"].startswith("2023.01")
    assert len(loader["package"]["sha256"]) == 64
    assert loader["binary"] == spec.binary and spec.binary.startswith("/usr/lib/u-boot/qemu_arm")
    assert loader["sha256"] == hashlib.sha256((built / "u-boot.bin").read_bytes()).hexdigest()

    fit = read_fit((built / "image.itb").read_bytes())
    kernel, ramdisk = fit.image("kernel-1"), fit.image("ramdisk-1")
    assert (kernel.type, kernel.arch, kernel.compression, kernel.load, kernel.entry) == \
        ("kernel", FIT_ARCH[board.arch.value], spec.compression, spec.kernel_load, spec.kernel_load)
    assert ramdisk.data == (built / "initramfs.cpio.gz").read_bytes() and ramdisk.load == spec.ramdisk_load
    if shutil.which("mkimage"):
        listing = subprocess.run(["mkimage", "-l", str(built / "image.itb")], capture_output=True, text=True,
                                 check=True).stdout
        assert f"Hash value:   {hashlib.sha256(kernel.data).hexdigest()}" in listing
        assert f"Load Address: {spec.kernel_load:#010x}" in listing and "Type:         Kernel Image" in listing
    script = multi_files(read_uimage((built / "boot.scr").read_bytes()))[0].decode()
    address = f"{spec.fit_address:#x}"
    assert f"load virtio 0:1 {address} image.itb\n" in script
    assert f"bootm {address}#conf-1 {address}#conf-1 ${{fdtcontroladdr}}\n" in script
    if shutil.which("mtype"):  # mtools reads the boot partition: U-Boot's view of it
        for name in ("boot.scr", "image.itb"):
            on_disk = subprocess.run(["mtype", "-i", f"{built / 'disk.img'}@@{FAT_OFFSET}", f"::{name}"],
                                     capture_output=True, check=True).stdout
            assert on_disk == (built / name).read_bytes()
    print(f"{built.name}: FIT {len((built / 'image.itb').read_bytes()):,} bytes, "
          f"boot.scr {len((built / 'boot.scr').read_bytes())} bytes, U-Boot {loader['size']:,} bytes")


def test_uboot_boots_the_fit_and_the_checks_pass(built, cache_dir):
    booted = run_fwgen("boot", "--board", built.name, "--out", str(built.parent), "--json", "--fresh-disk",
                       cache=cache_dir)
    assert booted.returncode == 0, booted.stdout + booted.stderr
    report = json.loads(booted.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["passed"] for c in checks.values()), checks
    assert {"console: U-Boot 2023.01", "console: Verifying Hash Integrity ... sha256+ OK",
            "http: / (port 80)", "persist: /etc/fwgen-persist-check"} <= set(checks)
    console = (state_folder(built) / "console.log").read_text(errors="replace")
    # U-Boot, not QEMU's loader, started the kernel: the script ran and both hashes verified.
    assert "Found U-Boot script /boot.scr" in console
    assert console.count("Verifying Hash Integrity ... sha256+ OK") >= 2
    assert console.index("Starting kernel ...") < console.index("fwgen: ready")
    # Booted in the RAM the board declares (limits.ram), all of it handed on to Linux by U-Boot.
    ram = load_board(built.name).limits.ram
    assert re.search(rf"Memory: \d+K/{ram * 1024}K available", console), re.findall(r"Memory: .*", console)
    print(f"{built.name}: U-Boot to ready {report['ready_seconds']:.1f} s")


def test_a_flipped_byte_in_the_fits_kernel_is_refused_and_reported(built, cache_dir):
    kernel = read_fit((built / "image.itb").read_bytes()).image("kernel-1").data
    disk = bytearray((built / "disk.img").read_bytes())
    at = disk.find(kernel[:4096])
    assert at > 0
    disk[at + len(kernel) // 2] ^= 0x01
    copy = state_folder(built) / "disk.img"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(bytes(disk))  # the device's disk `fwgen boot` uses without --fresh-disk (from this build)
    copy.with_name("disk.img.built").write_text(hashlib.sha256((built / "disk.img").read_bytes()).hexdigest() + "\n")
    started = time.monotonic()
    booted = run_fwgen("boot", "--board", built.name, "--out", str(built.parent), cache=cache_dir)
    seconds = time.monotonic() - started
    assert booted.returncode != 0
    [first] = [line for line in booted.stderr.splitlines() if line.startswith("fwgen: error:")]
    assert "the bootloader refused the image before 'fwgen: ready' appeared" in first
    assert "Bad hash value for 'hash-1' hash node in 'kernel-1' image node" in first
    assert "Starting kernel" not in (state_folder(built) / "console.log").read_text(errors="replace")
    print(f"{built.name}: flipped kernel byte refused after {seconds:.1f} s")
