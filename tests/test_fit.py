"""FIT images written with fwgen's own FDT code, listed and extracted by U-Boot's mkimage and
dumpimage (u-boot-tools, test-only), read back by `fwgen inspect`."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from fwgen.cli import main
from fwgen.dtb import DeviceTree, Node
from fwgen.errors import FormatError, UserError
from fwgen.images.fit import FitConfig, FitImage, make_fit, read_fit
from fwgen.images.uimage import compress

EPOCH = 1700002853
KERNEL = os.urandom(40000) + bytes(60000)
INITRAMFS = os.urandom(7001)

needs_uboot_tools = pytest.mark.skipif(shutil.which("mkimage") is None,
                                       reason="mkimage not installed (Debian package u-boot-tools, see .ci/setup)")


def _dtb() -> bytes:
    root = Node("", children=[Node("chosen")])
    root.set_strings("compatible", ["linux,dummy-virt"])
    return DeviceTree(root).to_bytes()


def _fit(kernel_compression: str = "gzip", load: int = 0x40400000) -> bytes:
    images = [
        FitImage("kernel-1", "kernel", compress(KERNEL, kernel_compression), "arm64",
                 compression=kernel_compression, load=load, entry=load, description="Linux"),
        FitImage("ramdisk-1", "ramdisk", INITRAMFS, "arm64", load=0x48000000),
        FitImage("fdt-1", "flat_dt", _dtb(), "arm64"),
    ]
    configs = [FitConfig("conf-1", "kernel-1", "ramdisk-1", "fdt-1"), FitConfig("conf-2", "kernel-1", "ramdisk-1")]
    return make_fit(images, configs, description="fwgen test", timestamp=EPOCH, default="conf-2")


def _listing(text: str) -> dict[str, dict[str, str]]:
    """mkimage -l's FIT listing: {image or configuration name: {field: value}}."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        head = re.match(r"^ (Image|Configuration) \d+ \((.+)\)$", line)
        if head:
            current = sections.setdefault(head[2], {})
        elif (field := re.match(r"^  ([A-Z][\w ]+):\s+(.*)$", line)) and current is not None:
            current[field[1]] = field[2].strip()
        elif (default := re.match(r"^ Default Configuration: '(.+)'$", line)):
            sections["default"] = {"name": default[1]}
    return sections


@needs_uboot_tools
def test_mkimage_lists_types_addresses_and_hashes(tmp_path):
    fit = tmp_path / "image.itb"
    fit.write_bytes(_fit())
    text = subprocess.run(["mkimage", "-l", str(fit)], capture_output=True, text=True, check=True).stdout
    listed = _listing(text)
    assert "FIT description: fwgen test" in text
    assert "Created:         Tue Nov 14 23:00:53 2023" in text  # the timestamp we gave, nothing else
    kernel, ramdisk, fdt = listed["kernel-1"], listed["ramdisk-1"], listed["fdt-1"]
    assert (kernel["Type"], kernel["Compression"], kernel["Architecture"], kernel["OS"]) == \
        ("Kernel Image", "gzip compressed", "AArch64", "Linux")
    assert kernel["Load Address"] == kernel["Entry Point"] == "0x40400000"
    assert kernel["Hash algo"] == "sha256"
    assert kernel["Hash value"] == hashlib.sha256(compress(KERNEL, "gzip")).hexdigest()
    assert (ramdisk["Type"], ramdisk["Compression"], ramdisk["Load Address"]) == \
        ("RAMDisk Image", "uncompressed", "0x48000000")
    assert ramdisk["Hash value"] == hashlib.sha256(INITRAMFS).hexdigest()
    assert fdt["Type"] == "Flat Device Tree" and fdt["Hash value"] == hashlib.sha256(_dtb()).hexdigest()
    assert listed["default"]["name"] == "conf-2"
    assert (listed["conf-1"]["Kernel"], listed["conf-1"]["Init Ramdisk"], listed["conf-1"]["FDT"]) == \
        ("kernel-1", "ramdisk-1", "fdt-1")
    assert "FDT" not in listed["conf-2"]


@needs_uboot_tools
@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_dumpimage_extracts_each_image_byte_identical(tmp_path, compression):
    fit = tmp_path / "image.itb"
    fit.write_bytes(_fit(compression))
    for index, expected in enumerate((compress(KERNEL, compression), INITRAMFS, _dtb())):
        out = tmp_path / f"image{index}"
        subprocess.run(["dumpimage", "-T", "flat_dt", "-p", str(index), "-o", str(out), str(fit)],
                       check=True, capture_output=True)
        assert out.read_bytes() == expected
    if compression == "gzip":
        assert gzip.decompress((tmp_path / "image0").read_bytes()) == KERNEL


@needs_uboot_tools
def test_a_64_bit_load_address_takes_two_cells_and_mkimage_reads_it(tmp_path):
    fit = tmp_path / "image.itb"
    fit.write_bytes(_fit("none", load=0x8_4040_0000))
    listed = _listing(subprocess.run(["mkimage", "-l", str(fit)], capture_output=True, text=True, check=True).stdout)
    assert listed["kernel-1"]["Load Address"] == "0x840400000"
    assert read_fit(fit.read_bytes()).image("kernel-1").load == 0x8_4040_0000


def test_same_inputs_give_the_same_bytes_and_the_reader_gets_them_back():
    assert _fit() == _fit()
    fit = read_fit(_fit())
    assert fit.timestamp == EPOCH and fit.default == "conf-2"
    assert [(i.name, i.type, i.compression, i.load) for i in fit.images] == [
        ("kernel-1", "kernel", "gzip", 0x40400000), ("ramdisk-1", "ramdisk", "none", 0x48000000),
        ("fdt-1", "flat_dt", "none", None)]
    assert all(h.ok for i in fit.images for h in i.hashes)
    assert fit.configurations["conf-2"] == {"kernel": "kernel-1", "ramdisk": "ramdisk-1"}
    assert gzip.decompress(fit.image("kernel-1").data) == KERNEL


def test_inspect_lists_the_images_and_a_flipped_kernel_byte_fails_its_hash(tmp_path):
    good = tmp_path / "image.itb"
    good.write_bytes(_fit("none"))
    result = CliRunner().invoke(main, ["inspect", str(good)])
    assert result.exit_code == 0, result.output
    assert re.search(r"kernel-1: kernel arm64 linux, compression none, 100,000 bytes, "
                     r"load 0x40400000 entry 0x40400000; sha256 [0-9a-f]{64} OK", result.output)
    assert "configuration conf-1: kernel kernel-1, ramdisk ramdisk-1, fdt fdt-1" in result.output
    extracted = CliRunner().invoke(main, ["inspect", str(good), "--extract", "ramdisk-1"])
    assert extracted.stdout_bytes == INITRAMFS
    raw = bytearray(good.read_bytes())
    raw[raw.index(KERNEL[:64]) + 500] ^= 0x80
    bad = tmp_path / "bad.itb"
    bad.write_bytes(bytes(raw))
    result = CliRunner().invoke(main, ["inspect", str(bad), "--json"])
    assert result.exit_code == 2
    facts = json.loads(result.output)
    assert facts["kind"] == "fit" and facts["ok"] is False
    assert [h["ok"] for i in facts["images"] for h in i["hashes"]] == [False, True, True]


@needs_uboot_tools
def test_external_data_as_mkimage_E_writes_it_is_read(tmp_path):
    fit = tmp_path / "image.itb"
    fit.write_bytes(_fit())
    subprocess.run(["mkimage", "-E", "-F", str(fit)], check=True, capture_output=True)
    read = read_fit(fit.read_bytes())
    assert "data" not in DeviceTree.parse(fit.read_bytes()).find("/images/kernel-1").properties
    assert read.image("ramdisk-1").data == INITRAMFS
    assert all(h.ok for i in read.images for h in i.hashes)


def test_wrong_references_and_names_are_refused():
    kernel = FitImage("kernel-1", "kernel", b"k", "arm64")
    with pytest.raises(UserError, match="configuration conf-1 names image 'ramdisk-9'"):
        make_fit([kernel], [FitConfig("conf-1", "kernel-1", "ramdisk-9")], description="", timestamp=0)
    with pytest.raises(UserError, match="FIT image kernel-1: compression 'xz' is not one of"):
        make_fit([FitImage("kernel-1", "kernel", b"k", "arm64", compression="xz")],
                 [FitConfig("conf-1", "kernel-1")], description="", timestamp=0)
    with pytest.raises(FormatError, match=r"^x\.dtb: a device tree without /images, not a FIT$"):
        read_fit(_dtb(), where="x.dtb")


@needs_uboot_tools
def test_fuzzed_fits_give_a_one_line_error_or_a_listing(tmp_path):
    """Seeded mutations of a FIT written by U-Boot's own mkimage (`-f auto`, and `-E` for data
    outside the tree) and of one fwgen wrote: the reader (dtb.py under read_fit) answers each
    with a listing or a one-line fwgen error, never a crash."""
    import random

    from test_fuzz_readers import Context, Reader, mutate, run_case

    (tmp_path / "kernel").write_bytes(KERNEL[:3000] + bytes(3000))
    seeds = [_fit("none")]
    for extra in ([], ["-E"]):
        out = tmp_path / f"auto{len(extra)}.itb"
        subprocess.run(["mkimage", "-f", "auto", *extra, "-A", "arm64", "-O", "linux", "-T", "kernel", "-C", "none",
                        "-a", "0x40400000", "-e", "0x40400000", "-d", str(tmp_path / "kernel"), str(out)],
                       check=True, capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
        seeds.append(out.read_bytes())
    reader = Reader((), lambda data, ctx: read_fit(data, where="fuzz.itb").describe())
    ctx = Context(tmp_path, {}, {}, b"")
    for seed in seeds[1:]:
        assert all(h.ok for i in read_fit(seed).images for h in i.hashes)
    findings = []
    for i in range(200):
        rng = random.Random(f"fit:{i}")
        which = rng.randrange(len(seeds))
        problem = run_case(reader, mutate(seeds[which], rng), seeds[which], ctx)
        if problem:
            findings.append(f"case {i} (seed {which}): {problem}")
    assert not findings, "\n".join(findings)


def test_hostile_trees_are_refused_in_one_line_or_read():
    deep = node = Node("")
    for level in range(100):
        child = Node(f"n{level}")
        node.children.append(child)
        node = child
    with pytest.raises(FormatError, match=r"^x\.itb: nodes nested over 64 deep at 0x[0-9a-f]+$"):
        read_fit(DeviceTree(deep).to_bytes(), where="x.itb")
    image = Node("kernel-1", {"data": b"k", "type": b"\xff\xfe\0"})
    tree = DeviceTree(Node("", children=[Node("images", children=[image])]))
    read = read_fit(tree.to_bytes()).image("kernel-1")
    assert read.type == "\ufffd\ufffd" and read.hashes == ()
    image.properties["load"] = b"\0\0"
    with pytest.raises(FormatError, match=r"^x\.itb: /images/kernel-1: DTB property kernel-1/load is 2 bytes, "
                                          r"not whole cells$"):
        read_fit(tree.to_bytes(), where="x.itb")
    image.properties["load"] = bytes(12)
    with pytest.raises(FormatError, match="kernel-1/load is 3 cells, not a 32- or 64-bit number"):
        read_fit(tree.to_bytes())


def test_boot_script_of_the_uboot_board_sets_bootargs_and_refuses_a_quote():
    from dataclasses import replace

    from fwgen.bootloader import build_boot_script
    from fwgen.config import load_board
    from fwgen.images.uimage import multi_files, read_uimage

    board = load_board("qemu-aarch64-uboot")
    image = read_uimage(build_boot_script(board, EPOCH))
    assert image.describe()["type"] == "script" and image.describe()["arch"] == "arm64"
    script = multi_files(image)[0].decode()
    assert "setenv bootargs 'console=ttyAMA0 panic=-1 rdinit=/init'\n" in script
    quoted = replace(board, kernel=replace(board.kernel, cmdline="console=ttyAMA0 x='y'"))
    with pytest.raises(UserError, match="cannot pass a single quote or newline to the kernel"):
        build_boot_script(quoted, EPOCH)
