"""Router flash images: the layout of a board's NOR flash, the kernel and squashfs placed on
erase-block boundaries in the firmware partition, the size budget checked before anything is
written, and `fwgen inspect` listing the partitions. The built qemu-mips-router's uImage is
read by mkimage -l (u-boot-tools, an independent reader)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess

import pytest
from buildutil import REPO, check_sboms, run_fwgen

from fwgen.config import load_board
from fwgen.errors import ConfigError, UserError
from fwgen.images.flash import (
    describe_flash,
    firmware_image,
    flash_image,
    plan_firmware,
    swap_words,
)
from fwgen.images.squashfs import read_squashfs
from fwgen.images.uimage import read_uimage

BOARD = "qemu-mips-router"


def test_kernel_and_squashfs_start_on_erase_blocks_and_the_rest_is_left_for_the_overlay():
    layout = plan_firmware(kernel=100_001, squashfs=70_000, partition=0x60000, erase_block=0x10000)
    assert (layout.kernel.offset, layout.kernel.size) == (0, 100_001)
    assert (layout.squashfs.offset, layout.squashfs.size) == (0x20000, 70_000)
    assert (layout.overlay.offset, layout.overlay.size) == (0x40000, 0x20000)
    assert layout.free == 0x20000
    image = firmware_image(layout, b"K" * 100_001, b"S" * 70_000)
    assert len(image) == 0x60000
    assert image[:100_001] == b"K" * 100_001 and set(image[100_001:0x20000]) == {0xFF}
    assert image[0x20000:0x20000 + 70_000] == b"S" * 70_000 and set(image[0x20000 + 70_000:]) == {0xFF}


def test_a_firmware_that_fits_exactly_leaves_no_free_space():
    layout = plan_firmware(kernel=0x10000, squashfs=0x20000, partition=0x30000, erase_block=0x10000)
    assert layout.free == 0 and layout.overlay.offset == 0x30000


def test_the_budget_error_gives_the_numbers():
    with pytest.raises(UserError) as e:
        plan_firmware(kernel=2_097_152, squashfs=5_242_880, partition=6_291_456, erase_block=65_536)
    assert e.value.message == ("squashfs 5,242,880 + kernel 2,097,152 bytes exceed the "
                                            "6,291,456-byte firmware partition by 1,048,576")


def test_sizes_count_as_whole_erase_blocks_in_the_budget():
    with pytest.raises(UserError, match=r"squashfs 131,072 \+ kernel 65,536 bytes exceed the 131,072-byte "
                                        r"firmware partition by 65,536"):
        plan_firmware(kernel=1, squashfs=65_537, partition=131_072, erase_block=65_536)


def test_words_below_the_swap_end_are_byte_swapped_and_the_rest_is_not():
    image = flash_image(16, [(0, b"\x01\x02\x03\x04\x05\x06\x07\x08"), (8, b"abcdefgh")], swap_words_below=12)
    assert image == b"\x04\x03\x02\x01\x08\x07\x06\x05dcbaefgh"
    assert swap_words(image, 12) == b"\x01\x02\x03\x04\x05\x06\x07\x08abcdefgh"
    assert flash_image(6, [(2, b"xy")]) == b"\xff\xffxy\xff\xff"


def _variant(tmp_path, text: str):
    path = tmp_path / f"{BOARD}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("change, message", [
    ("{name: firmware, size: 0xbf0000, content: firmware}", "0 partitions hold the firmware"),
    ("{name: firmware, offset: 0x3f0000, size: 0xbf0000, content: firmware}",
     "partition firmware at 0x3f0000 overlaps the one before, which ends at 0x400000"),
    ("{name: firmware, size: 0xbf8000, content: firmware}",
     "partition firmware size 0xbf8000 is not a multiple of the 0x10000-byte erase block"),
    ("{name: firmware, size: 0xc00000, content: firmware}",
     "partition art ends at 0x1010000, past the 0x1000000-byte flash"),
])
def test_a_bad_layout_is_refused_at_its_line(tmp_path, change, message):
    original = (REPO / "boards" / f"{BOARD}.yaml").read_text()
    line = "    - {name: firmware, size: 0xbf0000, content: firmware}"
    assert line in original
    text = original.replace(line, "    - " + change)
    if message.startswith("0 partitions"):
        text = text.replace("content: firmware}", "content: erased}")
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        load_board(_variant(tmp_path, text))
    assert f"{BOARD}.yaml:" in str(e.value)


def test_an_unknown_placeholder_in_the_uboot_commands_is_refused_at_its_line(tmp_path):
    original = (REPO / "boards" / f"{BOARD}.yaml").read_text()
    assert "    - tftpboot {address} {file}\n" in original
    text = original.replace("    - tftpboot {address} {file}\n", "    - tftpboot {adress} {file}\n")
    with pytest.raises(ConfigError, match=r"unknown placeholder \{adress\}") as e:
        load_board(_variant(tmp_path, text))
    assert re.search(rf"{BOARD}\.yaml:\d+:\d+: uboot\.commands\[2\]", str(e.value))


def test_the_flash_output_and_its_layout_come_together(tmp_path):
    original = (REPO / "boards" / f"{BOARD}.yaml").read_text()
    with pytest.raises(ConfigError, match="output flash needs a flash section"):
        load_board(_variant(tmp_path, original[:original.index("flash:\n")] + original[original.index("qemu:\n"):]))


def _flash_context(tmp_path, text: str, kernel: bytes, squashfs: bytes):
    """A build context at the flash step: kernel loaded, boot initramfs and squashfs written."""
    from fwgen.context import BuildContext
    from fwgen.kernel import Kernel

    staging = tmp_path / "staging"
    staging.mkdir()
    ctx = BuildContext(board=load_board(_variant(tmp_path, text)), outdir=tmp_path / "out", cache=None,
                       source_date_epoch=1_700_000_000, staging=staging)
    ctx.kernel = Kernel("6.1.0-test", kernel, "/boot/vmlinuz-6.1.0-test", {}, "test")
    (staging / "initramfs.cpio.gz").write_bytes(b"initramfs" * 1000)
    ctx.outputs["initramfs"] = staging / "initramfs.cpio.gz"
    (staging / "rootfs.squashfs").write_bytes(squashfs)
    return ctx, staging / "rootfs.squashfs"


def _without_uboot(text: str) -> str:
    # The U-Boot partition left erased: no package to fetch for a test of the layout alone.
    return text.replace("{name: u-boot, size: 0x3e0000, content: bootloader}", "{name: u-boot, size: 0x3e0000}")


def test_an_environment_partition_holds_the_boards_variables_with_their_crc(tmp_path):
    import zlib

    from fwgen.bootloader import write_flash

    text = _without_uboot((REPO / "boards" / f"{BOARD}.yaml").read_text())
    text = text.replace("{name: u-boot-env, size: 0x20000, content: erased}", "{name: u-boot-env, size: 0x20000, content: environment}")
    text = text.replace("  swap_words_below: 0x3e0000\n", "  swap_words_below: 0x3e0000\n  environment: {bootdelay: '3', ethaddr: '52:54:00:12:34:56'}\n")
    ctx, squashfs = _flash_context(tmp_path, text, b"\x01" * 100_000, b"hsqs" + bytes(70_000))
    write_flash(ctx, squashfs)
    flash = (ctx.staging / "flash.img").read_bytes()
    env = flash[0x3E0000:0x400000]
    assert int.from_bytes(env[:4], "little") == zlib.crc32(env[4:])
    assert env[4:].startswith(b"bootdelay=3\0ethaddr=52:54:00:12:34:56\0\0")
    assert set(flash[:0x3E0000]) == {0xFF}
    uimage = (ctx.staging / "uImage").read_bytes()
    assert ctx.flash["firmware"]["squashfs"]["offset"] == -(-len(uimage) // 0x10000) * 0x10000
    assert flash[0x400000:0x400000 + len(uimage)] == uimage
    assert ctx.flash["console_commands"][2].startswith("tftpboot 0x84")
    rows = describe_flash(flash, dict(ctx.flash, kind="flash"))
    [env_row] = [r for r in rows if r["name"] == "u-boot-env"]
    assert [f["summary"] for f in env_row["found"]] == ["U-Boot environment, 2 variable(s) (bootdelay, ethaddr), CRC OK"]
    spoiled = flash[:0x3E0010] + b"x" + flash[0x3E0011:]
    [env_row] = [r for r in describe_flash(spoiled, dict(ctx.flash, kind="flash")) if r["name"] == "u-boot-env"]
    assert "CRC MISMATCH" in env_row["found"][0]["summary"]


def test_the_budget_check_comes_before_any_flash_output_is_written(tmp_path):
    from fwgen.bootloader import write_flash

    text = _without_uboot((REPO / "boards" / f"{BOARD}.yaml").read_text())
    ctx, squashfs = _flash_context(tmp_path, text, bytes(range(256)) * 20_000, b"hsqs" + bytes(0xbf0000))
    before = sorted(p.name for p in ctx.staging.iterdir())
    with pytest.raises(UserError, match=r"exceed the 12,517,376-byte firmware partition by "):
        write_flash(ctx, squashfs)
    assert sorted(p.name for p in ctx.staging.iterdir()) == before
    assert set(ctx.outputs) == {"initramfs"} and ctx.flash is None


# --- the real board --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("flash")
    result = run_fwgen("build", "--board", BOARD, "--out", str(out), cache=cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / BOARD, result.stdout + result.stderr


@pytest.mark.network
def test_the_flash_image_holds_uboot_kernel_and_squashfs_where_the_layout_says(built):
    folder, log = built
    board = load_board(BOARD)
    flash = (folder / "flash.img").read_bytes()
    firmware = (folder / "firmware.bin").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    part = board.flash.firmware
    assert len(flash) == board.flash.size and len(firmware) == part.size
    assert flash[part.offset:part.end] == firmware
    layout = manifest["flash"]["firmware"]
    uimage = (folder / "uImage").read_bytes()
    assert layout["kernel"] == {"offset": 0, "size": len(uimage)}
    assert firmware[:len(uimage)] == uimage
    assert layout["squashfs"]["offset"] % board.flash.erase_block == 0
    assert layout["squashfs"]["offset"] == -(-len(uimage) // board.flash.erase_block) * board.flash.erase_block
    assert layout["overlay"]["offset"] % board.flash.erase_block == 0
    assert layout["overlay"]["offset"] + layout["free"] == part.size
    assert set(firmware[layout["overlay"]["offset"]:]) == {0xFF}
    # The squashfs in place is the whole root, readable as is.
    squashfs = folder / "root-from-flash.squashfs"
    squashfs.write_bytes(firmware[layout["squashfs"]["offset"]:layout["overlay"]["offset"]])
    with read_squashfs(squashfs) as image:
        assert b"fwgen-router" in image.read_file("/etc/hostname")
    squashfs.unlink()
    # U-Boot, word-swapped below 0x3E0000 as Malta's wiring needs; the environment erased.
    uboot = manifest["inputs"]["bootloader"]
    unswapped = swap_words(flash, board.flash.swap_words_below)
    assert hashlib.sha256(unswapped[:uboot["size"]]).hexdigest() == uboot["sha256"]
    assert flash[:4] == unswapped[:4][::-1]
    assert set(flash[0x3E0000:0x400000]) == {0xFF}
    assert f"{layout['free']:,} bytes" in log and "free for the overlay" in log
    # The uImage: the kernel and the boot initramfs, with the ELF's addresses.
    image = read_uimage(uimage)
    assert image.header_crc_ok and image.data_crc_ok and len(image.files) == 2


@pytest.mark.network
@pytest.mark.network
def test_the_routers_sboms_validate_and_its_flash_holds_uboot_kernel_and_root(built):
    folder, _ = built
    spdx, _ = check_sboms(folder)
    names = {p["SPDXID"]: p["name"] for p in spdx["packages"]}
    held = {names[r["relatedSpdxElement"]] for r in spdx["relationships"]
            if r["relationshipType"] == "CONTAINS" and names.get(r["spdxElementId"]) == "flash.img"}
    assert {"u-boot-qemu", "busybox", "base"} <= held and any(n.startswith("linux-image-") for n in held)


def test_mkimage_reads_the_uimage_inside_the_firmware_partition(built, tmp_path):
    if shutil.which("mkimage") is None:
        pytest.skip("mkimage (u-boot-tools) is not installed")
    folder, _ = built
    manifest = json.loads((folder / "manifest.json").read_text())
    kernel = manifest["flash"]["firmware"]["kernel"]
    extracted = tmp_path / "kernel-from-firmware"
    extracted.write_bytes((folder / "firmware.bin").read_bytes()[kernel["offset"]:kernel["size"]])
    listed = subprocess.run(["mkimage", "-l", str(extracted)], capture_output=True, text=True, check=True).stdout
    assert "MIPS Linux Multi-File Image (gzip compressed)" in listed
    assert "Load Address: 810f0000" in listed and "Entry Point:  810f0000" in listed
    assert re.search(r"Image 1: \d+ Bytes", listed)


@pytest.mark.network
def test_inspect_lists_the_partitions_and_what_is_inside(built):
    folder, _ = built
    result = run_fwgen("inspect", str(folder / "flash.img"), cache=folder)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    manifest = json.loads((folder / "manifest.json").read_text())
    squashfs = 0x400000 + manifest["flash"]["firmware"]["squashfs"]["offset"]
    assert any(line.startswith("  u-boot: 0x00000000-0x003e0000") and "words swapped" in line for line in lines)
    assert any(line.startswith("  u-boot-env: 0x003e0000-0x00400000") and line.endswith("erased") for line in lines)
    assert any(line.startswith("  art: 0x00ff0000-0x01000000") for line in lines)
    assert "    0x00400000: uImage 'Linux-6.1.0-" in result.stdout
    assert f"    {squashfs:#010x}: squashfs 4.0" in result.stdout
    assert "CRCs OK" in result.stdout
    assert f"free for the overlay: {manifest['flash']['firmware']['free']:,} bytes" in result.stdout
    firmware = run_fwgen("inspect", "--json", str(folder / "firmware.bin"), cache=folder)
    facts = json.loads(firmware.stdout)
    assert facts["kind"] == "firmware"
    assert [f["kind"] for f in facts["partitions"][0]["found"]] == ["uimage", "squashfs"]


@pytest.mark.network
def test_inspect_searches_a_flash_dump_without_its_manifest(built, tmp_path):
    folder, _ = built
    dump = tmp_path / "dump.bin"
    shutil.copyfile(folder / "flash.img", dump)
    result = run_fwgen("inspect", str(dump), cache=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    squashfs = 0x400000 + manifest["flash"]["firmware"]["squashfs"]["offset"]
    assert "flash dump, 16,777,216 bytes" in result.stdout and "searched" in result.stdout
    assert "    0x00400000: uImage 'Linux-6.1.0-" in result.stdout
    assert f"    {squashfs:#010x}: squashfs 4.0" in result.stdout


@pytest.mark.network
def test_a_firmware_beyond_its_partition_fails_before_writing_with_the_numbers(built, tmp_path, cache_dir):
    folder, _ = built
    manifest = json.loads((folder / "manifest.json").read_text())
    kernel = manifest["flash"]["firmware"]["kernel"]["size"]
    blocks = manifest["flash"]["firmware"]["overlay"]["offset"] - manifest["flash"]["firmware"]["squashfs"]["offset"]
    small = 0x400000  # 4 MiB: the kernel alone takes more than 5 MiB
    text = (REPO / "boards" / f"{BOARD}.yaml").read_text()
    text = text.replace("{name: firmware, size: 0xbf0000, content: firmware}",
                        f"{{name: firmware, size: {small:#x}, content: firmware}}")
    text = text.replace("{name: art, size: 0x10000}", f"{{name: art, size: {0xbf0000 - small + 0x10000:#x}}}")
    board = _variant(tmp_path, text)
    out = tmp_path / "out"
    result = run_fwgen("build", "--board", str(board), "--out", str(out), cache=cache_dir)
    assert result.returncode == 2, result.stdout + result.stderr
    kernel_blocks = -(-kernel // 0x10000) * 0x10000
    expected = (f"squashfs {blocks:,} + kernel {kernel_blocks:,} bytes exceed the {small:,}-byte firmware "
                f"partition by {blocks + kernel_blocks - small:,}")
    assert expected in result.stderr
    assert not out.exists() or not any(out.iterdir())


# --- booting it: U-Boot from the flash, driven over the console ----------------------------

def _confined(board, folder):
    """The board with a profile whose QEMU finds only the firmware the profile declares."""
    from dataclasses import replace

    from fwgen.qemu import confine_firmware

    profile = confine_firmware(board.qemu.profile, folder / "qemu")
    return replace(board, qemu=replace(board.qemu, profile=profile))


@pytest.mark.network
@pytest.mark.qemu
@pytest.mark.slow
def test_the_router_boots_through_uboot_from_its_flash_with_only_declared_firmware(built, tmp_path):
    """U-Boot starts from the word-swapped flash, fwgen types the board's commands at its
    prompt, the uImage comes by TFTP, Linux mounts the squashfs and the overlay it finds in
    the firmware partition; every check passes, a reboot keeps what was written (persist)."""
    import os

    from fwgen.boot import boot

    folder, _ = built
    board = _confined(load_board(BOARD), tmp_path)
    result = boot(board, folder, timeout_factor=float(os.environ.get("FWGEN_TIMEOUT_FACTOR", "1")), fresh_disk=True)
    assert result.passed, [(c.name, c.detail) for c in result.checks if not c.passed]
    names = [c.name for c in result.checks]
    assert "console: U-Boot 2023.01" in names and any(n.startswith("persist") for n in names)
    console = result.console_log.read_text(errors="replace")
    assert "maltael # tftpboot 0x" in console and "Bytes transferred = " in console
    assert "MIPS Linux Multi-File Image (gzip compressed)" in console
    assert "fwgen-init: firmware /dev/vda: squashfs at " in console
    manifest = json.loads((folder / "manifest.json").read_text())
    layout = manifest["flash"]["firmware"]
    assert (f"squashfs at {layout['squashfs']['offset']}, overlay at {layout['overlay']['offset']}") in console
    print(f"qemu-mips-router: ready after {result.ready_seconds:.1f} s")


@pytest.mark.network
@pytest.mark.qemu
@pytest.mark.slow
def test_a_uboot_command_that_fails_stops_the_boot_with_uboots_line(built, tmp_path):
    from dataclasses import replace

    from fwgen.boot import boot_spec_for
    from fwgen.errors import BootError
    from fwgen.qemu import Machine

    folder, _ = built
    spec = boot_spec_for(load_board(BOARD), folder, fresh_disk=True)
    commands = tuple(c.replace("uImage", "no-such-uImage") for c in spec.bootloader_commands)
    assert commands != spec.bootloader_commands
    with Machine(replace(spec, bootloader_commands=commands), tmp_path) as machine:
        with pytest.raises(BootError, match=r"the bootloader failed at 'tftpboot 0x[0-9a-f]+ no-such-uImage': "
                                            r"TFTP error: 'File not found'"):
            machine.start()


@pytest.mark.network
@pytest.mark.qemu
@pytest.mark.slow
def test_a_flipped_byte_in_the_tftp_uimage_is_refused_by_uboot_and_reported(built, tmp_path):
    from dataclasses import replace

    from fwgen.boot import READY_MARKER, boot_spec_for
    from fwgen.errors import BootError
    from fwgen.qemu import Machine

    folder, _ = built
    spec = boot_spec_for(load_board(BOARD), folder, fresh_disk=True)
    served = tmp_path / "tftp"
    served.mkdir()
    uimage = bytearray((folder / "uImage").read_bytes())
    uimage[len(uimage) // 2] ^= 0xFF
    (served / "uImage").write_bytes(bytes(uimage))
    with Machine(replace(spec, tftp=served), tmp_path) as machine:
        machine.start()
        with pytest.raises(BootError, match=r"the bootloader refused the image before 'fwgen: ready' appeared: "
                                            r".*Bad Data CRC"):
            machine.wait_for(READY_MARKER, timeout=60)
