"""Legacy uImage, boot script and environment blob: read against a real sample, written
byte-identical to what U-Boot's own mkimage and mkenvimage write (u-boot-tools, test-only)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from fwgen.cli import main
from fwgen.errors import FormatError, UserError
from fwgen.images.uimage import (
    compress,
    kernel_payload,
    make_env,
    make_multi_uimage,
    make_script,
    make_uimage,
    multi_files,
    read_uimage,
)
from fwgen.kernel import flatten_elf

EPOCH = 1700002853

needs_uboot_tools = pytest.mark.skipif(shutil.which("mkimage") is None,
                                       reason="mkimage not installed (Debian package u-boot-tools, see .ci/setup)")


def _mkimage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mkimage", *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})


def test_reads_the_real_mips_firmware_sample_and_checks_both_crcs(samples):
    raw = (samples / "uimage" / "uboot.image_with_header").read_bytes()
    image = read_uimage(raw)
    facts = image.describe()
    assert (facts["os"], facts["arch"], facts["type"], facts["compression"]) == ("linux", "mips", "firmware", "lzma")
    assert facts["name"] == "u-boot image"
    assert facts["load"] == facts["entry"] == 0x80010000
    assert facts["size"] == 32753 and len(image.data) == 32753
    assert facts["header_crc_ok"] and facts["data_crc_ok"]
    # A flash dump: the rest of the flash follows the declared data.
    assert facts["trailing_bytes"] == len(raw) - 64 - 32753 == 295000
    assert image.data[:1] == b"\x5d"  # the lzma properties byte the header's comp=3 promises


def test_a_flipped_byte_fails_the_data_crc_and_inspect_exits_2(samples, tmp_path):
    raw = bytearray((samples / "uimage" / "uboot.image_with_header").read_bytes())
    raw[64 + 1000] ^= 0x01
    damaged = tmp_path / "damaged.uimg"
    damaged.write_bytes(bytes(raw))
    facts = read_uimage(bytes(raw)).describe()
    assert facts["header_crc_ok"] and not facts["data_crc_ok"]
    result = CliRunner().invoke(main, ["inspect", str(damaged)])
    assert result.exit_code == 2
    assert "header CRC 0x05037284 OK, data CRC 0x385a8513 MISMATCH" in result.output
    raw[64 + 1000] ^= 0x01
    raw[8] ^= 0x01  # ih_time: the header CRC fails, the data CRC holds
    facts = read_uimage(bytes(raw)).describe()
    assert not facts["header_crc_ok"] and facts["data_crc_ok"]


def test_inspect_shows_the_sample_header(samples):
    result = CliRunner().invoke(main, ["inspect", str(samples / "uimage" / "uboot.image_with_header"), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["kind"] == "uimage" and facts["ok"] is True
    assert facts["name"] == "u-boot image" and facts["time"] == 1411375627  # 2014-09-22 08:47:07 UTC
    text = CliRunner().invoke(main, ["inspect", str(samples / "uimage" / "uboot.image_with_header")]).output
    assert "linux mips firmware, compression lzma, 32,753 bytes" in text
    assert "295,000 bytes follow the image data" in text


def test_truncated_and_foreign_files_are_refused_in_one_line(samples):
    raw = (samples / "uimage" / "uboot.image_with_header").read_bytes()
    with pytest.raises(FormatError, match=r"^x\.uimg: header says 32,753 data bytes at 0x40, the file has 100$"):
        read_uimage(raw[:164], where="x.uimg")
    with pytest.raises(FormatError, match=r"^x\.uimg: offset 0x0: not a U-Boot legacy image header: "):
        read_uimage(raw[:40], where="x.uimg")
    with pytest.raises(UserError, match="the header holds 32"):
        make_uimage(b"", name="n" * 33, arch="arm")
    with pytest.raises(UserError, match="uImage arch 'arm65' is not one of"):
        make_uimage(b"", name="n", arch="arm65")


@needs_uboot_tools
def test_gzip_kernel_uimage_is_byte_identical_to_mkimage(tmp_path):
    kernel = os.urandom(20000) + bytes(30000)
    (tmp_path / "Image.gz").write_bytes(compress(kernel, "gzip"))
    _mkimage("-A", "mips", "-O", "linux", "-T", "kernel", "-C", "gzip", "-a", "0x80100000",
             "-e", "0x80104c20", "-n", "Linux-6.1.0-fwgen", "-d", str(tmp_path / "Image.gz"), str(tmp_path / "u"))
    ours = make_uimage(compress(kernel, "gzip"), name="Linux-6.1.0-fwgen", arch="mips", compression="gzip",
                       load=0x80100000, entry=0x80104C20, time=EPOCH)
    assert ours == (tmp_path / "u").read_bytes()
    assert gzip.decompress(read_uimage(ours).data) == kernel


@needs_uboot_tools
def test_multi_file_uimage_is_byte_identical_to_mkimage_and_dumpimage_extracts_each(tmp_path):
    kernel, initramfs = os.urandom(5001), os.urandom(3003)  # odd sizes: the kernel gets padded
    (tmp_path / "k").write_bytes(kernel)
    (tmp_path / "r").write_bytes(initramfs)
    _mkimage("-A", "arm", "-O", "linux", "-T", "multi", "-C", "none", "-a", "0x40008000", "-e", "0x40008000",
             "-n", "kernel+initramfs", "-d", f"{tmp_path / 'k'}:{tmp_path / 'r'}", str(tmp_path / "m"))
    ours = make_multi_uimage([kernel, initramfs], name="kernel+initramfs", arch="arm", load=0x40008000,
                             entry=0x40008000, time=EPOCH)
    assert ours == (tmp_path / "m").read_bytes()
    image = read_uimage(ours)
    assert image.files == (5001, 3003) and multi_files(image) == [kernel, initramfs]
    (tmp_path / "ours").write_bytes(ours)
    for index, expected in enumerate((kernel, initramfs)):
        out = tmp_path / f"part{index}"
        subprocess.run(["dumpimage", "-T", "multi", "-p", str(index), "-o", str(out), str(tmp_path / "ours")],
                       check=True, capture_output=True)
        assert out.read_bytes() == expected


@needs_uboot_tools
def test_boot_script_is_byte_identical_to_mkimage_and_listed_as_a_script(tmp_path):
    script = "load virtio 0:1 0x50000000 image.itb\nbootm 0x50000000#conf-1 0x50000000#conf-1 ${fdtcontroladdr}\n"
    (tmp_path / "boot.cmd").write_text(script)
    listing = _mkimage("-A", "arm64", "-T", "script", "-C", "none", "-d", str(tmp_path / "boot.cmd"),
                       str(tmp_path / "boot.scr")).stdout
    assert "Script" in listing
    assert make_script(script, arch="arm64", time=EPOCH) == (tmp_path / "boot.scr").read_bytes()


@needs_uboot_tools
@pytest.mark.parametrize("flags", [[], ["-r"], ["-b"], ["-r", "-b"]], ids=["plain", "redundant", "big-endian", "both"])
def test_environment_blob_is_byte_identical_to_mkenvimage(tmp_path, flags):
    variables = [("bootcmd", "run distro_bootcmd"), ("bootargs", "console=ttyS0,115200 root=/dev/mtdblock3"),
                 ("fwgen_board", "qemu-mips-router")]
    (tmp_path / "env.txt").write_text("".join(f"{n}={v}\n" for n, v in variables))
    subprocess.run(["mkenvimage", *flags, "-s", "0x2000", "-o", str(tmp_path / "env.bin"), str(tmp_path / "env.txt")],
                   check=True, capture_output=True)
    ours = make_env(variables, 0x2000, redundant="-r" in flags, big_endian="-b" in flags)
    assert ours == (tmp_path / "env.bin").read_bytes()


def test_environment_that_does_not_fit_or_has_a_bad_name_is_refused():
    with pytest.raises(UserError, match=r"needs 1,008 bytes, its size is 1,000"):
        make_env([("a", "x" * 1000)], 1000)
    with pytest.raises(UserError, match="'a=b'"):
        make_env([("a=b", "c")], 1000)


def _tiny_elf(tmp_path):
    """A two-segment ELF linked by the host's ld, with a gap between the segments and a bss."""
    (tmp_path / "k.s").write_text('.text\n.globl _start\n_start: .ascii "TEXTTEXT"\n'
                                  '.data\n.ascii "DATA"\n.bss\n.space 64\n')
    (tmp_path / "k.ld").write_text(
        "ENTRY(_start)\nPHDRS { text PT_LOAD; data PT_LOAD; }\nSECTIONS {\n . = 0x80100000;\n"
        " .text : { *(.text) } :text\n . = 0x80100040;\n .data : { *(.data) } :data\n"
        " .bss : { *(.bss) } :data\n}\n")
    subprocess.run(["as", "-o", str(tmp_path / "k.o"), str(tmp_path / "k.s")], check=True)
    subprocess.run(["ld", "-T", str(tmp_path / "k.ld"), "-o", str(tmp_path / "k.elf"), str(tmp_path / "k.o")], check=True)
    return tmp_path / "k.elf"


@pytest.mark.skipif(shutil.which("ld") is None or shutil.which("objcopy") is None, reason="binutils not installed")
def test_elf_kernel_becomes_the_flat_binary_objcopy_writes(tmp_path):
    elf = _tiny_elf(tmp_path)
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(tmp_path / "k.bin")], check=True)
    flat = flatten_elf(elf.read_bytes())
    assert flat.data == (tmp_path / "k.bin").read_bytes()
    assert flat.data[:8] == b"TEXTTEXT" and flat.data[0x40:] == b"DATA"  # gap zero-filled, no bss
    assert (flat.load, flat.entry) == (0x80100000, 0x80100000)
    data, load, entry = kernel_payload(elf.read_bytes(), "gzip", where="k.elf")
    assert gzip.decompress(data) == flat.data and (load, entry) == (0x80100000, 0x80100000)
    with pytest.raises(FormatError, match=r"^k\.elf: not a readable ELF kernel"):
        flatten_elf(b"\x7fELF" + bytes(20), where="k.elf")


@pytest.mark.network
@pytest.mark.slow
@needs_uboot_tools
def test_uimage_output_of_debians_mips_vmlinux_is_read_by_mkimage(tmp_path, cache_dir):
    """qemu-mips with outputs [initramfs, uimage]: Debian's 4kc-malta kernel is an ELF (its
    vmlinuz, a self-decompressing kernel linked at 0x810f0000); the uImage carries its PT_LOAD
    segments gzip'd, at the load address and entry point readelf reads from the ELF."""
    from buildutil import REPO, run_fwgen

    from fwgen.kernel import flatten_elf as flatten

    text = (REPO / "boards" / "qemu-mips.yaml").read_text()
    assert "outputs: [initramfs, disk]" in text
    board = tmp_path / "boards" / "qemu-mips.yaml"
    board.parent.mkdir()
    board.write_text(text.replace("outputs: [initramfs, disk]", "outputs: [initramfs, uimage]"))
    result = run_fwgen("build", "--board", str(board), "--out", str(tmp_path / "out"), cache=cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    outdir = tmp_path / "out" / "qemu-mips"
    vmlinux = (outdir / "kernel").read_bytes()
    flat = flatten(vmlinux)
    program_headers = subprocess.run(["readelf", "-lhW", str(outdir / "kernel")], capture_output=True, text=True,
                                     check=True).stdout
    loads = [int(line.split()[2], 16) for line in program_headers.splitlines() if line.strip().startswith("LOAD")]
    entry = int(re.search(r"Entry point address:\s+(0x[0-9a-f]+)", program_headers)[1], 16)
    assert (flat.load, flat.entry) == (min(loads), entry)
    listing = subprocess.run(["mkimage", "-l", str(outdir / "uImage")], capture_output=True, text=True,
                             check=True).stdout
    assert "Image Type:   MIPS Linux Kernel Image (gzip compressed)" in listing
    assert f"Load Address: {flat.load:08x}" in listing and f"Entry Point:  {entry:08x}" in listing
    subprocess.run(["dumpimage", "-T", "kernel", "-p", "0", "-o", str(tmp_path / "kernel.gz"), str(outdir / "uImage")],
                   check=True, capture_output=True)
    assert gzip.decompress((tmp_path / "kernel.gz").read_bytes()) == flat.data
    image = read_uimage((outdir / "uImage").read_bytes())
    assert image.describe()["name"].startswith("Linux-6.1") and image.data_crc_ok and image.header_crc_ok
