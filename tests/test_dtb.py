"""Flattened device trees: read and written by fwgen, compiled and decompiled by dtc
(the independent reader and writer), and the raspi0 fix-up on Debian's real DTB."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fwgen.dtb import DeviceTree, Fixup, apply_fixups
from fwgen.errors import FormatError, UserError

# The bcm2835 watchdog as Debian's bcm2835-rpi-zero.dtb describes it (from arch/arm/boot/dts/
# bcm283x.dtsi), inside enough of a tree to exercise every token and a reservation.
SOURCE = """/dts-v1/;
/memreserve/ 0x00000000 0x00001000;
/ {
    compatible = "raspberrypi,model-zero", "brcm,bcm2835";
    model = "Raspberry Pi Zero";
    #address-cells = <1>;
    #size-cells = <1>;
    soc {
        compatible = "simple-bus";
        #address-cells = <1>;
        #size-cells = <1>;
        ranges = <0x7e000000 0x20000000 0x2000000>;
        watchdog@7e100000 {
            compatible = "brcm,bcm2835-pm", "brcm,bcm2835-pm-wdt";
            #power-domain-cells = <1>;
            #reset-cells = <1>;
            reg = <0x7e100000 0x114 0x7e00a000 0x24>;
            reg-names = "pm", "asb";
            clocks = <&clk 21>;
            system-power-controller;
        };
        clk: cprman@7e101000 {
            #clock-cells = <1>;
            reg = <0x7e101000 0x2000>;
        };
    };
    chosen {
        bootargs = "";
    };
};
"""
WATCHDOG = "/soc/watchdog@7e100000"
RASPI0_FIXUP = Fixup(WATCHDOG, set=(("reg", (0x7E100000, 0x114)), ("reg-names", ("pm",))))


def _dtc(*args: str, data: bytes) -> bytes:
    if shutil.which("dtc") is None:
        pytest.skip("dtc not installed (apt install device-tree-compiler)")
    result = subprocess.run(["dtc", "-q", *args], input=data, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def _compile(source: str) -> bytes:
    return _dtc("-I", "dts", "-O", "dtb", "-", data=source.encode())


def _decompile(blob: bytes) -> str:
    return _dtc("-I", "dtb", "-O", "dts", "-", data=blob).decode()


def test_reads_what_dtc_writes():
    tree = DeviceTree.parse(_compile(SOURCE))
    assert tree.reservations == [(0, 0x1000)]
    assert tree.root.strings("compatible") == ["raspberrypi,model-zero", "brcm,bcm2835"]
    watchdog = tree.find(WATCHDOG)
    assert watchdog.cells("reg") == [0x7E100000, 0x114, 0x7E00A000, 0x24]
    assert watchdog.strings("reg-names") == ["pm", "asb"]
    assert watchdog.properties["system-power-controller"] == b""
    assert [path for path, _ in tree.walk()] == [
        "/", "/soc", WATCHDOG, "/soc/cprman@7e101000", "/chosen"]


def test_writes_exactly_what_dtc_writes():
    blob = _compile(SOURCE)
    assert DeviceTree.parse(blob).to_bytes() == blob


def test_raspi0_fixup_changes_only_the_watchdog(tmp_path):
    blob = _compile(SOURCE)
    tree = DeviceTree.parse(blob)
    apply_fixups(tree, [RASPI0_FIXUP])
    fixed = _decompile(tree.to_bytes())
    assert "reg = <0x7e100000 0x114>;" in fixed
    assert 'reg-names = "pm";' in fixed
    expected = _decompile(blob).replace("reg = <0x7e100000 0x114 0x7e00a000 0x24>;", "reg = <0x7e100000 0x114>;")
    expected = expected.replace('reg-names = "pm\\0asb";', 'reg-names = "pm";')
    assert fixed == expected


def test_fixups_set_numbers_and_strings_and_delete():
    tree = DeviceTree.parse(_compile(SOURCE))
    apply_fixups(tree, [Fixup("/chosen", set=(("bootargs", ("console=ttyAMA0",)), ("linux,stdout-path", (1,))),
                              delete=()),
                        Fixup(WATCHDOG, delete=("system-power-controller",))])
    text = _decompile(tree.to_bytes())
    assert 'bootargs = "console=ttyAMA0";' in text
    assert "linux,stdout-path = <0x01>;" in text
    assert "system-power-controller" not in text


def test_fixup_errors_name_the_node():
    tree = DeviceTree.parse(_compile(SOURCE))
    with pytest.raises(UserError, match="no node /soc/watchdog@7e200000"):
        apply_fixups(tree, [Fixup("/soc/watchdog@7e200000", delete=("reg",))])
    with pytest.raises(UserError, match="no property absent"):
        apply_fixups(tree, [Fixup(WATCHDOG, delete=("absent",))])
    with pytest.raises(UserError, match="all numbers or all strings"):
        apply_fixups(tree, [Fixup(WATCHDOG, set=(("reg", (1, "x")),))])


def test_damaged_blobs_are_refused_with_the_place():
    blob = _compile(SOURCE)
    with pytest.raises(FormatError, match="not a flattened device tree"):
        DeviceTree.parse(b"\0" * 64, where="x.dtb")
    with pytest.raises(FormatError, match="x.dtb: header says"):
        DeviceTree.parse(blob[:-8], where="x.dtb")
    struct_at = int.from_bytes(blob[8:12], "big")
    broken = bytearray(blob)
    broken[struct_at + 3] = 7  # the first token: FDT_BEGIN_NODE (1) -> 7
    with pytest.raises(FormatError, match=f"x.dtb: structure block at {struct_at:#x}"):
        DeviceTree.parse(bytes(broken), where="x.dtb")


@pytest.mark.network
def test_debian_rpi_zero_dtb_round_trips_and_takes_the_fixup(rpi_dtb: bytes):
    tree = DeviceTree.parse(rpi_dtb, where="bcm2835-rpi-zero.dtb")
    assert tree.to_bytes() == rpi_dtb
    watchdog = tree.find(WATCHDOG)
    assert watchdog.cells("reg") == [0x7E100000, 0x114, 0x7E00A000, 0x24]
    apply_fixups(tree, [RASPI0_FIXUP])
    original, fixed = _decompile(rpi_dtb).splitlines(), _decompile(tree.to_bytes()).splitlines()
    changed = [(a.strip(), b.strip()) for a, b in zip(original, fixed, strict=True) if a != b]
    assert changed == [
        ("reg = <0x7e100000 0x114 0x7e00a000 0x24>;", "reg = <0x7e100000 0x114>;"),
        ('reg-names = "pm\\0asb";', 'reg-names = "pm";'),
    ]


@pytest.fixture(scope="module")
def rpi_dtb(cache_dir) -> bytes:
    from fwgen.arch import Arch
    from fwgen.board import Feed
    from fwgen.cache import Cache
    from fwgen.fetch import fetch_packages, read_package_entries

    feed = Feed("debian", "deb", "http://deb.debian.org/debian")
    [meta] = fetch_packages([feed], Arch.ARMV6, ["linux-image-rpi"], nodeps=["linux-image-rpi"],
                            cache=Cache(Path(cache_dir)))
    [image] = [r.name for group in meta.package.depends for r in group if r.name.startswith("linux-image-")]
    [kernel] = fetch_packages([feed], Arch.ARMV6, [image], nodeps=[image], cache=Cache(Path(cache_dir)))
    [dtb] = [e.data for e in read_package_entries(kernel.path) if e.path.endswith("/bcm2835-rpi-zero.dtb")]
    return dtb
