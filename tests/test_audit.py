"""The ELF audit against real binaries: our musl builds, Debian's glibc ones, zig objects."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fwgen.arch import Arch
from fwgen.audit import audit_paths, audit_rootfs, inspect_elf
from fwgen.board import Feed
from fwgen.busybox_toolchain import find_toolchain
from fwgen.rootfs import RootFS
from fwgen.run import run

DEBIAN = Feed("debian", "deb", "http://deb.debian.org/debian", suite="bookworm")


def compile_object(tmp_path: Path, cache_dir: Path, arch: Arch, *extra: str) -> Path:
    """A small object file from zig for `arch` (no libc needed: compile only)."""
    toolchain = find_toolchain()
    (tmp_path / "f.c").write_text("double f(double x, float y) { return x * y + 1.5; }\n")
    out = tmp_path / f"f-{arch.value}.o"
    env = {"ZIG_GLOBAL_CACHE_DIR": str(cache_dir / "zig"), "ZIG_LOCAL_CACHE_DIR": str(tmp_path / "zl")}
    run([toolchain.zig, "cc", *toolchain.cc_flags(arch), *extra, "-O2", "-c", tmp_path / "f.c", "-o", out], env=env)
    return out


# -- fast: objects from zig -------------------------------------------------------------------


def test_armv7_code_is_rejected_on_the_armv6_board(tmp_path, cache_dir):
    armv7 = compile_object(tmp_path, cache_dir, Arch.ARMV7)
    assert audit_paths([armv7], Arch.ARMV7).errors == []
    errors = audit_paths([armv7], Arch.ARMV6).errors
    assert any("built for ARM v7 (Tag_CPU_arch), but the board's CPU is ARM v6" in e for e in errors), errors
    assert all(e.startswith(str(armv7)) for e in errors)


def test_neon_code_is_rejected_on_the_armv6_board(tmp_path, cache_dir):
    neon = compile_object(tmp_path, cache_dir, Arch.ARMV6, "-mcpu=cortex_a8", "-mfpu=neon")
    errors = audit_paths([neon], Arch.ARMV6).errors
    assert any("NEON" in e for e in errors) and any("VFPv3" in e for e in errors), errors


def test_machine_and_endianness_mismatches_are_named(tmp_path, cache_dir):
    mips = compile_object(tmp_path, cache_dir, Arch.MIPS)
    info = audit_paths([mips], Arch.MIPS).files[0]
    assert (info.machine, info.endian, info.cpu_arch, info.mips_abi) == ("mips", "big", "mips32r2", "o32")
    assert audit_paths([mips], Arch.MIPS).errors == []
    assert audit_paths([mips], Arch.MIPSEL).errors == [f"{mips}: big-endian, but the board is little-endian"]
    assert audit_paths([mips], Arch.AARCH64).errors == [f"{mips}: machine mips, but the board is aarch64 (aarch64)"]


def test_a_library_with_another_float_abi_is_an_error(tmp_path, cache_dir):
    """Soft-float code runs on the hard-float board, but cannot load a hard-float library."""
    zig = find_toolchain().zig
    env = {"ZIG_GLOBAL_CACHE_DIR": str(cache_dir / "zig"), "ZIG_LOCAL_CACHE_DIR": str(tmp_path / "zl")}
    (tmp_path / "lib.c").write_text("double foo(double x) { return x * 2; }\n")
    (tmp_path / "use.c").write_text("double foo(double); double bar(double x) { return foo(x) + 1; }\n")
    cpu = "-mcpu=arm1176jzf_s"
    # Compile, then link with zig's bare LLD: `zig cc -shared` would build compiler_rt first.
    run([zig, "cc", "-target", "arm-linux-musleabihf", cpu, "-c", "lib.c", "-o", "lib.o"], cwd=tmp_path, env=env)
    run([zig, "ld.lld", "-shared", "-soname", "libfoo.so", "lib.o", "-o", "libfoo.so"], cwd=tmp_path, env=env)
    run([zig, "cc", "-target", "arm-linux-musleabi", cpu, "-c", "use.c", "-o", "use.o"], cwd=tmp_path, env=env)
    run([zig, "ld.lld", "-shared", "-soname", "libuse.so", "use.o", "libfoo.so", "-o", "libuse.so"], cwd=tmp_path, env=env)
    rootfs = RootFS()
    for name in ("libfoo.so", "libuse.so"):
        rootfs.add_file(f"/usr/lib/{name}", (tmp_path / name).read_bytes())
    report = audit_rootfs(rootfs, Arch.ARMV6)
    use = next(f for f in report.files if f.path == "/usr/lib/libuse.so")
    assert (use.float_abi, use.needed, use.missing) == ("soft", ["libfoo.so"], [])
    assert report.errors == ["/usr/lib/libuse.so: soft-float, but libfoo.so (/usr/lib/libfoo.so) is hard-float"]
    rootfs.remove("/usr/lib/libfoo.so")
    assert audit_rootfs(rootfs, Arch.ARMV6).errors == ["/usr/lib/libuse.so: needs libfoo.so, which the image does not hold"]


def test_malformed_and_foreign_files(tmp_path):
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x7fELF\x01\x01\x01" + b"\0" * 20)
    assert "malformed ELF file" in audit_paths([broken], Arch.ARMV6).errors[0]
    rootfs = RootFS()
    x86 = Path("/bin/true").read_bytes()
    rootfs.add_file("/lib/firmware/blob.elf", x86)  # runs on another processor: reported only
    rootfs.add_file("/usr/bin/true", x86, 0o755)
    report = audit_rootfs(rootfs, Arch.ARMV6)
    assert [f.path for f in report.files] == ["/lib/firmware/blob.elf", "/usr/bin/true"]
    assert report.errors[0] == "/usr/bin/true: machine x86_64, but the board is armv6 (arm)"
    assert not any(e.startswith("/lib/firmware") and "machine" in e for e in report.errors)


# -- Debian's real binaries ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def armhf_rootfs(cache_dir) -> RootFS:
    """dropbear-bin for armhf with its whole dependency closure, and busybox-static."""
    from fwgen.fetch import Cache, fetch_packages, install_package

    rootfs = RootFS()
    for fetched in fetch_packages([DEBIAN], Arch.ARMV7, ["dropbear-bin", "busybox-static"], cache=Cache(cache_dir)):
        install_package(rootfs, fetched)
    return rootfs


@pytest.mark.network
def test_debian_dynamic_binary_resolves_its_libraries(armhf_rootfs):
    report = audit_rootfs(armhf_rootfs, Arch.ARMV7)
    assert report.errors == []
    dbclient = next(f for f in report.files if f.path == "/usr/bin/dbclient")
    assert (dbclient.static, dbclient.libc, dbclient.interpreter) == (False, "glibc", "/lib/ld-linux-armhf.so.3")
    assert "libc.so.6" in dbclient.needed and dbclient.missing == []
    assert (dbclient.float_abi, dbclient.cpu_arch, dbclient.arm_eabi) == ("hard", "v7", 5)
    assert dbclient.pie and dbclient.relro and dbclient.bind_now and dbclient.nx_stack


@pytest.mark.network
def test_debian_dynamic_binary_without_its_libraries_is_an_error(armhf_rootfs):
    alone = RootFS()
    alone.add_file("/usr/bin/dbclient", armhf_rootfs["/usr/bin/dbclient"].data, 0o755)
    report = audit_rootfs(alone, Arch.ARMV7)
    assert "/usr/bin/dbclient: needs libc.so.6, which the image does not hold" in report.errors


@pytest.mark.network
def test_debian_busybox_static_is_static_glibc_and_not_for_armv6(armhf_rootfs):
    path = armhf_rootfs.resolve("/bin/busybox").path
    info = inspect_elf(path, armhf_rootfs[path].data)
    assert (info.static, info.libc, info.interpreter, info.needed) == (True, "glibc", None, [])
    armv6 = audit_rootfs(armhf_rootfs, Arch.ARMV6).errors
    assert f"{path}: built for ARM v7 (Tag_CPU_arch), but the board's CPU is ARM v6" in armv6


@pytest.mark.network
@pytest.mark.parametrize("form", ["initramfs", "squashfs", "folder"])
def test_audit_reads_images_and_folders(armhf_rootfs, tmp_path, form):
    direct = audit_rootfs(armhf_rootfs, Arch.ARMV7)
    report = audit_paths([write_form(armhf_rootfs, tmp_path, form)], Arch.ARMV7)
    assert [f.path for f in report.files] == [f.path for f in direct.files]
    assert report.errors == [] and len(report.files) > 20
    as_json = json.loads(report.to_json())
    assert any(f["path"] == "/usr/bin/dbclient" and f["libc"] == "glibc" for f in as_json["files"])


@pytest.mark.parametrize("form", ["initramfs", "squashfs", "folder"])
def test_audit_reads_each_form_through_the_one_reader(tmp_path, form):
    """Offline: the host's own `true` in each form audits as it does in the model, and a
    setuid file keeps its owner (the readers audit had before dropped owners to 0:0)."""
    rootfs = RootFS()
    rootfs.add_file("/bin/true", Path(shutil.which("true") or "/bin/true").resolve().read_bytes(), 0o755)
    rootfs.add_symlink("/bin/false", "true")
    rootfs.add_file("/bin/su", b"#!/bin/sh\n", 0o4755, uid=1000, gid=50)
    target = write_form(rootfs, tmp_path, form)
    if form == "folder":
        if os.geteuid() != 0:
            pytest.skip("only root can give a file another owner")
        os.chown(target / "bin" / "su", 1000, 50)
        os.chmod(target / "bin" / "su", 0o4755)  # chown clears the setuid bit
    direct = audit_rootfs(rootfs, None)
    report = audit_paths([target], None)
    assert [f.path for f in report.files] == [f.path for f in direct.files] == ["/bin/true"]
    assert report.errors == direct.errors
    def owners(special):
        return [(s.path, s.kind, s.mode, s.uid, s.gid) for s in special]
    assert owners(report.special) == owners(direct.special) == [("/bin/su", "setuid", 0o104755, 1000, 50)]


def write_form(rootfs: RootFS, tmp_path: Path, form: str) -> Path:
    """`rootfs` written as an initramfs, a squashfs or a folder under `tmp_path`."""
    from fwgen.images.cpio import write_initramfs
    from fwgen.images.squashfs import write_squashfs

    if form == "initramfs":
        write_initramfs(rootfs, tmp_path / "initramfs.cpio.gz", mtime=0)
        return tmp_path / "initramfs.cpio.gz"
    if form == "squashfs":
        write_squashfs(rootfs, tmp_path / "root.squashfs", mtime=0)
        return tmp_path / "root.squashfs"
    write_folder(rootfs, tmp_path / "root")
    return tmp_path / "root"


def write_folder(rootfs: RootFS, folder: Path) -> None:
    """Regular files, folders and symlinks of `rootfs` under `folder` (what an unpacked image holds)."""
    from fwgen.rootfs import EntryType

    for entry in rootfs:
        host = folder / entry.path.lstrip("/")
        if entry.type is EntryType.DIR:
            host.mkdir(parents=True, exist_ok=True)
        elif entry.type is EntryType.FILE:
            host.write_bytes(entry.data)
        elif entry.type is EntryType.SYMLINK:
            host.symlink_to(entry.target)


# -- our musl builds (slow: they build BusyBox) -----------------------------------------------


@pytest.mark.slow
def test_our_armv7_busybox_is_rejected_on_armv6_and_fits_armv7(cache_dir):
    from fwgen.busybox import build_busybox

    binary = build_busybox(Arch.ARMV7, cache_root=cache_dir)
    info = audit_paths([binary], Arch.ARMV7).files[0]
    assert (info.libc, info.static, info.cpu_arch, info.float_abi, info.errors) == ("musl", True, "v7", "hard", [])
    assert any("Tag_CPU_arch" in e for e in audit_paths([binary], Arch.ARMV6).errors)
