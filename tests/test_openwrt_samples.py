"""Real OpenWrt feeds (../shared/samples/openwrt-*): packages made by OpenWrt's own tools are
recognised, verified against their signed Packages and extracted with their modes and links,
and a damaged one is reported by package and feed."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from fwgen import usign
from fwgen.arch import Arch
from fwgen.audit import audit_rootfs
from fwgen.errors import FormatError
from fwgen.fetch import FetchedPackage, install_package, ipk, read_package_entries
from fwgen.fetch.backend import INFLATED_BYTES, read_head
from fwgen.fetch.backends import backend_for_file
from fwgen.fetch.verify import identify, verify_file
from fwgen.rootfs import EntryType, RootFS

MVEBU = "openwrt-core-mvebu"
MT7621 = "openwrt-simonsmh-mt7621"
MVEBU_KEY = "d95e275d41a63bff"
EPOCH = 1700002853  # SourceDateEpoch of every mvebu control


def _real_ipks(samples: Path) -> list[Path]:
    return sorted([*(samples / MVEBU).glob("*.ipk"), *(samples / MT7621).glob("*.ipk")])


def _stanzas(samples: Path, name: str) -> dict[str, dict[str, str]]:
    folder = samples / name
    keys = usign.load_keys([folder])
    verified = ipk.verify_index((folder / "Packages.gz").read_bytes(), (folder / "Packages.sig").read_bytes(),
                                keys, f"{name}/Packages")
    return {s["Package"]: s for s in ipk.parse_stanzas(verified.text, f"{name}/Packages")}


def test_real_feed_indexes_verify_and_parse_whole(samples):
    # Descriptions there hold lines of a single space, which are part of the field.
    mvebu, mt7621 = _stanzas(samples, MVEBU), _stanzas(samples, MT7621)
    assert (len(mvebu), len(mt7621)) == (639, 46)
    assert "libc" not in mvebu and "kernel" not in mvebu  # OpenWrt's index script skips them
    description = mvebu["iptables-mod-cluster"]["Description"]
    assert description.startswith("iptables extensions for matching cluster.\n\nNetfilter (IPv4/IPv6) module")
    assert description.endswith("see `iptables -m cluster --help` for more information.")
    assert mvebu["fwtool"]["Depends"] == "libc"


def test_every_real_ipk_is_sniffed_as_ipk_by_build_and_verify(samples):
    ipks = _real_ipks(samples)
    assert len(ipks) == 12
    for path in ipks:
        head = read_head(path)
        # One tar header's worth of the inflated stream: the first member's name shows.
        assert len(head.inflated) == INFLATED_BYTES and head.inflated.startswith(b"./debian-binary\0"), path.name
        assert backend_for_file(path).name == "ipk", path.name
        assert identify(path) == "ipk", path.name
    # What the build used to read: 64 bytes of fwtool's file inflate to nothing at all.
    fwtool = (samples / MVEBU / "fwtool_2019-11-12-8f7fe925-1_arm_cortex-a9_vfpv3-d16.ipk").read_bytes()
    assert zlib.decompressobj(31).decompress(fwtool[:64]) == b""


def test_real_ipks_verify_against_their_signed_feeds(samples):
    for path in _real_ipks(samples):
        report = verify_file(path, [path.parent])
        if path.name.startswith(("libc_", "kernel_")):
            # Real files, but the index does not list them: verify cannot vouch for them.
            assert not report.ok and "not listed in the signed" in report.detail, report
            continue
        assert report.ok and report.kind == "ipk", report
        assert report.key == (MVEBU_KEY if MVEBU in str(path) else "12bd84d19e263f64")
        assert "SHA256sum match the signed Packages" in report.detail


def _fetched(samples: Path, name: str, stanzas: dict[str, dict[str, str]]) -> FetchedPackage:
    folder = samples / MVEBU
    package = ipk.package_from_stanza(stanzas[name], feed="core", base_url=folder.as_uri(), source="Packages")
    return FetchedPackage(package, folder / package.filename)


def test_real_ipks_install_into_the_rootfs_with_modes_links_and_times(samples):
    stanzas = _stanzas(samples, MVEBU)
    rootfs = RootFS()
    # libc is in no index: read straight from its file, its format sniffed.
    for entry in read_package_entries(samples / MVEBU / "libc_1.2.4-4_arm_cortex-a9_vfpv3-d16.ipk"):
        rootfs.add(entry)
    for name in ("libgcc1", "fwtool", "uboot-envtools"):
        install_package(rootfs, _fetched(samples, name, stanzas))
    loader = rootfs["/lib/ld-musl-armhf.so.1"]
    assert (loader.type, loader.target, loader.mode) == (EntryType.SYMLINK, "libc.so", 0o777)
    assert rootfs.resolve("/lib/ld-musl-armhf.so.1") is rootfs["/lib/libc.so"]
    assert rootfs["/usr/bin/ldd"].target == "../../lib/libc.so"
    fwtool = rootfs["/usr/bin/fwtool"]
    assert (fwtool.type, fwtool.mode, fwtool.uid, fwtool.gid, fwtool.mtime) == (EntryType.FILE, 0o755, 0, 0, EPOCH)
    assert len(fwtool.data) == 8200 and fwtool.data[:4] == b"\x7fELF" and fwtool.provenance == "ipk:fwtool"
    assert rootfs["/usr/sbin/fw_setenv"].target == "fw_printenv"
    assert rootfs["/usr/sbin/fw_printenv"].provenance == "ipk:uboot-envtools"
    assert rootfs["/lib/libgcc_s.so.1"].type is EntryType.FILE
    assert rootfs["/etc/uci-defaults/30_uboot-envtools"].mode == 0o644
    assert rootfs["/usr/bin"].mode == 0o755


def test_a_damaged_real_ipk_is_named_by_package_and_feed(samples, tmp_path):
    stanzas = _stanzas(samples, MVEBU)
    good = _fetched(samples, "fwtool", stanzas)
    # A cache keeps files under their hash: the error must name the package instead.
    damaged = tmp_path / "sha256" / good.package.sha256[:2] / good.package.sha256
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(good.path.read_bytes()[:2000])
    with pytest.raises(FormatError) as caught:
        install_package(RootFS(), FetchedPackage(good.package, damaged))
    message = str(caught.value)
    assert message.startswith("package fwtool 2019-11-12-8f7fe925-1 (feed core): "
                              "fwtool_2019-11-12-8f7fe925-1_arm_cortex-a9_vfpv3-d16.ipk: "), message
    assert good.package.sha256 not in message and "\n" not in message


def _installed(samples: Path, names: tuple[str, ...]) -> RootFS:
    rootfs = RootFS()
    for name in names:
        [path] = (samples / MVEBU).glob(f"{name}_*.ipk")
        for entry in read_package_entries(path):
            rootfs.add(entry)
    return rootfs


def test_audit_reads_the_dynamic_table_of_sstripped_openwrt_binaries(samples):
    # OpenWrt strips the section headers off its binaries: DT_NEEDED lives only in PT_DYNAMIC.
    rootfs = _installed(samples, ("libc", "libgcc1", "fwtool", "uboot-envtools"))
    report = audit_rootfs(rootfs, Arch.ARMV7)
    assert report.errors == []
    files = {f.path: f for f in report.files}
    for path in ("/usr/bin/fwtool", "/usr/sbin/fw_printenv"):
        info = files[path]
        assert (info.type, info.interpreter, info.libc) == ("pie", "/lib/ld-musl-armhf.so.1", "musl")
        assert info.needed == ["libgcc_s.so.1", "libc.so"] and info.missing == []
        # vfpv3-d16 hard-float: e_flags says so (no build attributes survive sstrip).
        assert (info.float_abi, info.arm_eabi, info.cpu_arch) == ("hard", 5, None)
        assert info.bind_now and any("sstrip" in note for note in info.notes)
    assert files["/lib/libgcc_s.so.1"].libc == "musl"  # it needs libc.so; no GLIBC_ guess
    # A soft-float GCC runtime (e_flags without EF_ARM_ABI_FLOAT_HARD) cannot serve them.
    libgcc = rootfs["/lib/libgcc_s.so.1"]
    flags = int.from_bytes(libgcc.data[0x24:0x28], "little")
    soft = libgcc.data[:0x24] + (flags & ~0x400).to_bytes(4, "little") + libgcc.data[0x28:]
    rootfs.add(replace(libgcc, data=soft))
    assert sorted(audit_rootfs(rootfs, Arch.ARMV7).errors) == [
        "/lib/libgcc_s.so.1: soft-float, but libc.so (/lib/libc.so) is hard-float",
        "/usr/bin/fwtool: hard-float, but libgcc_s.so.1 (/lib/libgcc_s.so.1) is soft-float",
        "/usr/sbin/fw_printenv: hard-float, but libgcc_s.so.1 (/lib/libgcc_s.so.1) is soft-float"]
    # And without it, the audit finds the hole.
    rootfs.remove("/lib/libgcc_s.so.1")
    assert sorted(audit_rootfs(rootfs, Arch.ARMV7).errors) == [
        "/usr/bin/fwtool: needs libgcc_s.so.1, which the image does not hold",
        "/usr/sbin/fw_printenv: needs libgcc_s.so.1, which the image does not hold"]
