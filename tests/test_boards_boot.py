"""Every shipped board other than the qemu-aarch64 ones (tests/test_boot*.py) built from the real
Debian mirror and booted under QEMU with its own checks: the ready line, `uname -m`, the
squashfs root, HTTP from the host through the forwarded port (plus the overlays' checks).
rpi-zero boots its SD-card image: kernel, DTB, initramfs and cmdline come out of its FAT."""

from __future__ import annotations

import json
import re
import time

import pytest
from buildutil import REPO, boot_with_declared_firmware_only, check_sboms, run_fwgen

from fwgen.config import load_board

pytestmark = [pytest.mark.network, pytest.mark.qemu, pytest.mark.slow]

# board -> what `uname -m` must print and where the squashfs root is: the board files' checks
# must say the same, so editing a board cannot weaken what this test proves.
BOARDS = {
    "qemu-armv7": ("armv7l", "/dev/vda1"),
    "qemu-mips": ("mips", "/dev/vda1"),
    "qemu-mips64el": ("mips64", "/dev/vda1"),
    "rpi-zero": ("armv6l", "/dev/mmcblk0p2"),
}


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    return tmp_path_factory.mktemp("boards")


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_board_builds_boots_and_passes_its_checks(board, out_root, cache_dir):
    started = time.monotonic()
    built = run_fwgen("build", "--board", board, "--out", str(out_root), cache=cache_dir)
    build_seconds = time.monotonic() - started
    assert built.returncode == 0, built.stdout + built.stderr
    manifest = json.loads((out_root / board / "manifest.json").read_text())
    check_sboms(out_root / board)
    # No default board carries glibc: BusyBox and dropbear are static musl (the audit's libc per ELF).
    assert "glibc" not in manifest["elf_libc"] and manifest["elf_libc"]["musl"] >= 1, manifest["elf_libc"]

    booted = run_fwgen("boot", "--board", board, "--out", str(out_root), "--json", cache=cache_dir)
    assert booted.returncode == 0, booted.stdout + booted.stderr
    report = json.loads(booted.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["passed"] for c in checks.values()), checks
    uname, root = BOARDS[board]
    declared = {c.name: c for c in load_board(board).checks}
    assert declared["run: uname -m"].expect == uname
    assert any(root in (c.command or "") and "squashfs" in (c.command or "") for c in declared.values())
    assert any(name.startswith("http:") for name in checks)
    assert len(checks) >= 4
    if board == "rpi-zero":  # issue 6: base, network, httpd, ssh and ntp, proven on the Pi too
        assert {"tcp: 22", "service: dropbear", "service: httpd", "service: ntpd"} <= set(checks)
    console = (out_root / ".state" / board / "console.log").read_text(errors="replace")
    assert "fwgen: ready" in console
    # Booted with the RAM the board declares (limits.ram), as the kernel counted it. The Pi's
    # QEMU machine has a fixed 512 MiB: mem= on its command line holds the kernel to the 64.
    ram = load_board(board).limits.ram
    assert ram == 64
    assert re.search(rf"Memory: \d+K/{ram * 1024}K available", console), (ram, re.findall(r"Memory: .*", console))
    assert f"root is {root} (squashfs" in console
    sizes = {name: o["size"] for name, o in manifest["outputs"].items()}
    print(f"{board}: build {build_seconds:.1f} s, ready after {report['ready_seconds']:.1f} s, sizes {sizes}")


def test_every_board_declares_the_ram_it_boots_with():
    """Every in-tree board declares its RAM, and fwgen boot (here and in the other boot tests)
    gives the guest exactly that."""
    for path in sorted((REPO / "boards").glob("*.yaml")):
        board = load_board(str(path))
        assert board.limits.ram is not None, path.name
        assert board.qemu is not None and board.qemu.memory == board.limits.ram, path.name


# OpenWrt's floor: every board boots in 64 MiB but these, whose bootloader keeps more (README's RAM
# table and the board files say what sets each floor, measured with real boots).
ABOVE_64_MIB = {
    "qemu-aarch64-uboot": 96,  # Debian's qemu_arm64 U-Boot keeps ~35 MiB; the FIT and kernel need ~37
    "qemu-aarch64-ab": 96,  # the same, with a 16 MiB FIT slot read whole
    "qemu-mips-router": 256,  # Debian's maltael U-Boot has 256 MiB compiled in
}


def test_every_board_declares_64_mib_but_the_named_exceptions():
    declared = {path.stem: load_board(str(path)).limits.ram for path in sorted((REPO / "boards").glob("*.yaml"))}
    assert declared == {name: ABOVE_64_MIB.get(name, 64) for name in declared}


# The firmware guard boots every QEMU profile through a board built here, except virt-aarch64:
# its board, qemu-aarch64, is built and guarded in test_boot.py, and malta-mipsel-router,
# whose board qemu-mips-router boots only with its declared firmware in test_flash.py.
GUARDED_ELSEWHERE = {"virt-aarch64", "malta-mipsel-router"}


def test_every_qemu_profile_has_a_firmware_guard_boot():
    profiles = {path.stem for path in (REPO / "qemu").glob("*.yaml")}
    guarded = {load_board(board).qemu.profile.name for board in BOARDS}
    assert guarded | GUARDED_ELSEWHERE == profiles


# Every in-tree board's SBOMs are validated where a test builds it: here, and elsewhere for
# these (test_squashfs_boot.py checks every board with a disk output).
SBOMS_CHECKED_ELSEWHERE = {"qemu-aarch64": "test_boot.py", "qemu-mips-router": "test_flash.py",
                           "qemu-aarch64-alpine": "test_alpine_boot.py", "qemu-aarch64-ab": "test_updates.py"}


def test_every_board_has_its_sboms_validated_by_a_build_test():
    from test_squashfs_boot import DISK_BOARDS

    boards = {path.stem for path in (REPO / "boards").glob("*.yaml")}
    assert set(BOARDS) | set(DISK_BOARDS) | set(SBOMS_CHECKED_ELSEWHERE) == boards


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_board_boots_with_only_its_profiles_firmware(board, out_root, cache_dir, tmp_path):
    """A minimal QEMU install (apt --no-install-recommends: no seabios, no ipxe-qemu) has no
    ROM files: the board must boot with QEMU finding only what its profile declares."""
    if not (out_root / board / "manifest.json").exists():
        built = run_fwgen("build", "--board", board, "--out", str(out_root), cache=cache_dir)
        assert built.returncode == 0, built.stderr
    seconds = boot_with_declared_firmware_only(board, out_root / board, tmp_path)
    print(f"{board}: ready after {seconds:.1f} s with only the declared firmware")


def test_the_firmware_guard_stops_malta_at_an_undeclared_rom(out_root, cache_dir, tmp_path):
    """The guard bites: malta's default VGA and a PCI NIC with its option ROM stop the
    confined QEMU at start, naming the ROM."""
    from dataclasses import replace

    from fwgen.boot import READY_MARKER, boot_spec_for
    from fwgen.errors import BootError
    from fwgen.qemu import Machine, confine_firmware

    if not (out_root / "qemu-mips" / "manifest.json").exists():
        built = run_fwgen("build", "--board", "qemu-mips", "--out", str(out_root), cache=cache_dir)
        assert built.returncode == 0, built.stderr
    spec = boot_spec_for(load_board("qemu-mips"), out_root / "qemu-mips", fresh_disk=True)
    for change, rom in (({"args": ()}, "vgabios-cirrus.bin"), ({"nic": "virtio-net-pci"}, "efi-virtio.rom")):
        profile = confine_firmware(replace(spec.profile, **change), tmp_path / rom)
        with Machine(replace(spec, profile=profile), tmp_path / rom) as machine:
            machine.start()
            with pytest.raises(BootError, match=f'failed to find romfile "{re.escape(rom)}"'):
                machine.wait_for(READY_MARKER, timeout=30)


def test_rpi_zero_boots_what_its_fat_partition_says(out_root, cache_dir):
    """Change cmdline.txt inside the card's FAT partition (with mtools, not fwgen): the guest
    must see the change. The DTB fix-up reaches the guest while the card keeps Debian's DTB."""
    import shutil
    import subprocess

    from fwgen.boot import READY_MARKER, boot_spec_for
    from fwgen.dtb import DeviceTree
    from fwgen.images.sdcard import read_boot_files
    from fwgen.qemu import Machine

    if shutil.which("mcopy") is None:
        pytest.skip("mcopy not installed (apt install mtools)")
    outdir = out_root / "rpi-zero"
    if not (outdir / "manifest.json").exists():
        built = run_fwgen("build", "--board", "rpi-zero", "--out", str(out_root), cache=cache_dir)
        assert built.returncode == 0, built.stderr
    card = outdir / "sdcard.img"
    before = read_boot_files(card)
    cmdline = outdir / "cmdline.txt"
    cmdline.write_text(before.cmdline + " fwgen.test=from-fat\n")
    subprocess.run(["mcopy", "-o", "-i", f"{card}@@{4 << 20}", str(cmdline), "::cmdline.txt"], check=True)

    spec = boot_spec_for(load_board("rpi-zero"), outdir, fresh_disk=True)
    with Machine(spec, out_root / "rpi-zero-fat") as machine:
        machine.start()
        machine.wait_for(READY_MARKER, timeout=180)
        status, output = machine.run("cat /proc/cmdline; od -An -tx1 /proc/device-tree/soc/watchdog@7e100000/reg")
        assert status == 0, output
        machine.poweroff()
    lines = output.splitlines()
    assert "fwgen.test=from-fat" in lines[0]
    assert "".join(lines[1:]).split() == "7e 10 00 00 00 00 01 14".split()  # one reg entry
    card_dtb = DeviceTree.parse(read_boot_files(card).dtb)
    assert len(card_dtb.find("/soc/watchdog@7e100000").cells("reg")) == 4  # the card is untouched


def test_a_vendor_kernel_given_as_files_boots(out_root, cache_dir, tmp_path):
    """kernel.image + kernel.modules_from instead of a package: the files are what a vendor's
    BSP would hand over, here extracted from Debian's armmp kernel package (zImage renamed,
    modules as a tarball laid out by `make modules_install`, and as a /lib/modules folder)."""
    import io
    import tarfile

    from fwgen.arch import Arch
    from fwgen.board import Feed
    from fwgen.cache import Cache
    from fwgen.fetch import fetch_packages, read_package_entries
    from fwgen.rootfs import EntryType

    cache = Cache(cache_dir)
    feed = Feed("debian", "deb", "http://deb.debian.org/debian")
    [meta] = fetch_packages([feed], Arch.ARMV7, ["linux-image-armmp"], nodeps=["linux-image-armmp"], cache=cache)
    [name] = [r.name for g in meta.package.depends for r in g if r.name.startswith("linux-image-")]
    [package] = fetch_packages([feed], Arch.ARMV7, [name], nodeps=[name], cache=cache)
    vendor = tmp_path / "vendor"
    (vendor / "modroot").mkdir(parents=True)
    with tarfile.open(vendor / "modules.tar.gz", "w:gz", compresslevel=1) as tar:
        for entry in read_package_entries(package.path):
            if entry.type is not EntryType.FILE:
                continue
            if entry.path.startswith("/boot/vmlinuz-"):
                (vendor / "zImage").write_bytes(entry.data)  # the release only in the banner now
            elif entry.path.startswith("/lib/modules/"):
                info = tarfile.TarInfo("." + entry.path)
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
                folder_copy = vendor / "modroot" / entry.path.removeprefix("/lib/modules/")
                folder_copy.parent.mkdir(parents=True, exist_ok=True)
                folder_copy.write_bytes(entry.data)
    text = (REPO / "boards" / "qemu-armv7.yaml").read_text()
    assert "  package: linux-image-armmp\n" in text
    for variant, modules in (("vendor-armv7", "vendor/modules.tar.gz"), ("vendor-armv7-dir", "vendor/modroot")):
        (tmp_path / f"{variant}.yaml").write_text(text.replace("name: qemu-armv7", f"name: {variant}").replace(
            "  package: linux-image-armmp\n",
            f"  package: null\n  image: vendor/zImage\n  modules_from: {modules}\n"))
        built = run_fwgen("build", "--board", str(tmp_path / f"{variant}.yaml"), "--out", str(out_root),
                          cache=cache_dir)
        assert built.returncode == 0, built.stdout + built.stderr
        kernel = json.loads((out_root / variant / "manifest.json").read_text())["inputs"]["kernel"]
        assert kernel["release"] == name.removeprefix("linux-image-")
        assert kernel["vendor_image"].endswith("vendor/zImage")
    modules = [json.loads((out_root / v / "manifest.json").read_text())["inputs"]["kernel_modules"]
               for v in ("vendor-armv7", "vendor-armv7-dir")]
    assert modules[0] == modules[1] and "virtio_net" in modules[0]
    booted = run_fwgen("boot", "--board", str(tmp_path / "vendor-armv7.yaml"), "--out", str(out_root), "--json",
                       cache=cache_dir)
    assert booted.returncode == 0, booted.stdout + booted.stderr
    report = json.loads(booted.stdout)
    assert report["passed"] and any(c["name"] == "run: uname -m" for c in report["checks"])
