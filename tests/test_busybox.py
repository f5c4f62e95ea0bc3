"""BusyBox built with Zig for every arch: functional gate, cache, fragments, install.

The builds are `slow` (1-3 minutes each on two cores, once per cache; FWGEN_TEST_CACHE keeps
them between runs). Every binary is checked by running it under qemu-user.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from fwgen.arch import Arch
from fwgen.audit import audit_paths
from fwgen.busybox import (
    DEFAULT_SOURCE,
    BusyboxBuildError,
    BusyboxSource,
    build_busybox,
    cache_key,
    install_busybox,
    parse_fragment,
)
from fwgen.busybox_download import download_source
from fwgen.busybox_gate import GateError, check_busybox, list_applets, qemu_user_argv
from fwgen.busybox_toolchain import find_toolchain
from fwgen.errors import ConfigError, FetchError
from fwgen.progress import QUIET
from fwgen.rootfs import EntryType, RootFS
from fwgen.run import run

EVERY_ARCH = list(Arch)


def built(arch: Arch, cache_dir: Path, fragments=()) -> Path:
    return build_busybox(arch, cache_root=cache_dir, fragments=fragments, progress=QUIET)


# -- fast ---------------------------------------------------------------------------------------


def test_fragment_parser_names_file_and_line(tmp_path):
    good = "# comment\nCONFIG_STATIC=y\n# CONFIG_TC is not set\nCONFIG_EXTRA_CFLAGS=\"-O2\"\n"
    assert parse_fragment(tmp_path / "f", good) == {"CONFIG_STATIC": "y", "CONFIG_TC": None, "CONFIG_EXTRA_CFLAGS": '"-O2"'}
    with pytest.raises(ConfigError, match=r"f:3: not a Kconfig setting: 'STATIC=y'"):
        parse_fragment(tmp_path / "f", "CONFIG_A=y\n\nSTATIC=y\n")


def test_cache_key_follows_every_input():
    toolchain = find_toolchain()
    base = cache_key(Arch.ARMV6, DEFAULT_SOURCE, [], ["CONFIG_A=y\n"], toolchain)
    assert base == cache_key(Arch.ARMV6, DEFAULT_SOURCE, [], ["CONFIG_A=y\n"], toolchain)
    others = {
        cache_key(Arch.ARMV7, DEFAULT_SOURCE, [], ["CONFIG_A=y\n"], toolchain),
        cache_key(Arch.ARMV6, DEFAULT_SOURCE, [], ["# CONFIG_A is not set\n"], toolchain),
        cache_key(Arch.ARMV6, BusyboxSource("1.35.0", "0" * 64, ()), [], ["CONFIG_A=y\n"], toolchain),
        cache_key(Arch.ARMV6, DEFAULT_SOURCE, [], ["CONFIG_A=y\n"], type(toolchain)(toolchain.zig, "9.9.9")),
    }
    assert base not in others and len(others) == 4


def test_zig_wrapper_compiles_with_kbuild_flags(tmp_path, cache_dir):
    """The wrapper takes Kbuild's -Wp,-MD,<file> and the linker flags zig rejects."""
    toolchain = find_toolchain()
    cross = toolchain.write_wrappers(tmp_path / "bin", Arch.ARMV6)
    (tmp_path / "a.c").write_text('#include "a.h"\nint f(double x) { return (int)(x * A); }\n')
    (tmp_path / "a.h").write_text("#define A 3\n")
    env = {"ZIG_GLOBAL_CACHE_DIR": str(cache_dir / "zig"), "ZIG_LOCAL_CACHE_DIR": str(tmp_path / "zl")}
    run([cross + "gcc", "-Wp,-MD,.a.o.d", "-Wl,--warn-common", "-Os", "-c", "a.c", "-o", "a.o"], cwd=tmp_path, env=env)
    assert "a.h" in (tmp_path / ".a.o.d").read_text()
    info = audit_paths([tmp_path / "a.o"], Arch.ARMV6).files[0]
    assert (info.machine, info.type, info.cpu_arch, info.float_abi) == ("arm", "relocatable", "v6", "hard")
    assert info.fp_arch == 2 and not info.neon


def test_download_fails_over_to_the_next_mirror(tmp_path):
    payload = b"not really a tarball, but pinned"
    bad = b"a tampered copy"
    server = _serve({"/good.tar.bz2": payload, "/bad.tar.bz2": bad})
    source = BusyboxSource("0.0", hashlib.sha256(payload).hexdigest(), (
        "http://127.0.0.1:9/closed.tar.bz2",  # nothing listens on the discard port
        f"{server}/bad.tar.bz2",  # wrong SHA-256: refused, next mirror
        f"{server}/good.tar.bz2",
    ))
    start = time.monotonic()
    path = download_source(source, tmp_path, QUIET)
    assert path.read_bytes() == payload
    assert time.monotonic() - start < 15
    with pytest.raises(FetchError, match="cannot download busybox-0.0.tar.bz2"):
        download_source(BusyboxSource("0.0", "1" * 64, (f"{server}/bad.tar.bz2",)), tmp_path / "x", QUIET)


def _serve(files: dict[str, bytes]) -> str:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


# -- the builds, one per arch -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", EVERY_ARCH, ids=lambda a: a.value)
def test_build_runs_under_qemu_user_and_fits_the_arch(arch, cache_dir):
    start = time.monotonic()
    binary = built(arch, cache_dir)
    took = time.monotonic() - start
    # The gate ran inside the build; run it again, as the binary may come from a kept cache.
    checked = check_busybox(binary, arch)
    assert {"sh", "hush", "awk", "sed", "grep", "sort", "gzip", "unxz", "sha256sum", "tar", "cpio", "dc", "diff", "vi"} <= set(checked)
    uname = run(qemu_user_argv(arch, binary, "uname", "-m")).stdout.decode().strip()
    assert uname == arch.uname_m
    report = audit_paths([binary], arch)
    assert report.errors == []
    info = report.files[0]
    assert (info.static, info.libc, info.interpreter) == (True, "musl", None)
    assert info.endian == arch.endian and info.elf_class == arch.elf_class
    if arch is Arch.ARMV6:
        assert (info.cpu_arch, info.float_abi, info.fp_arch) == ("v6", "hard", 2)
    if arch is Arch.MIPS64EL:  # Debian's mips64el ABI: n64, MIPS64r2, hard-float
        assert (info.mips_abi, info.cpu_arch, info.float_abi) == ("n64", "mips64r2", "hard")
    assert b"GLIBC_" not in binary.read_bytes()
    print(f"\n{arch.value}: {took:.1f} s, {binary.stat().st_size} bytes")


@pytest.mark.slow
def test_second_build_compiles_nothing(cache_dir):
    binary = built(Arch.AARCH64, cache_dir)
    before = binary.stat().st_mtime_ns
    leftovers = set((cache_dir / "busybox").iterdir())
    start = time.monotonic()
    again = built(Arch.AARCH64, cache_dir)
    took = time.monotonic() - start
    assert again == binary and binary.stat().st_mtime_ns == before
    assert set((cache_dir / "busybox").iterdir()) == leftovers  # no build folder was made
    assert took < 2.0, f"a cache hit took {took:.2f} s"


@pytest.mark.slow
def test_changed_fragment_rebuilds_and_concurrent_builds_share_one(cache_dir, tmp_path):
    default = built(Arch.ARMV6, cache_dir)
    default_bytes = default.read_bytes()
    fragment = tmp_path / "no-vi.config"
    # A comment unique to this run makes a new cache key: the build happens even in a kept cache.
    fragment.write_text(f"# test run {uuid.uuid4()}\n# CONFIG_VI is not set\n")
    results: list[Path | BaseException] = []

    def build() -> None:
        try:
            results.append(built(Arch.ARMV6, cache_dir, fragments=[fragment]))
        except BaseException as e:
            results.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1], results
    rebuilt = results[0]
    assert isinstance(rebuilt, Path) and rebuilt != default
    assert "bin/vi" in list_applets(default_bytes, Arch.ARMV6)
    assert "bin/vi" not in list_applets(rebuilt.read_bytes(), Arch.ARMV6)
    assert "# CONFIG_VI is not set" in (rebuilt.parent / "config").read_text()
    check_busybox(rebuilt, Arch.ARMV6)

    # Back to the default configuration in the kept tree: Kbuild recompiles only what
    # depends on CONFIG_VI, and the result is the same binary, byte for byte.
    shutil.rmtree(default.parent)
    start = time.monotonic()
    again = built(Arch.ARMV6, cache_dir)
    took = time.monotonic() - start
    compiled = (again.parent / "build.log").read_text().count("\n  CC ")
    assert compiled < 30, f"{compiled} files recompiled for a one-symbol change"
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(default_bytes).digest()
    print(f"\nback to defconfig: {compiled} files recompiled in {took:.1f} s")
    shutil.rmtree(rebuilt.parent)  # unique to this run: do not let kept caches grow


@pytest.mark.slow
def test_failed_compile_shows_the_error_and_keeps_the_log(cache_dir, tmp_path):
    fragment = tmp_path / "broken.config"
    fragment.write_text('CONFIG_EXTRA_CFLAGS="-DBB_GLOBAL_CONST= -include fwgen-no-such-header.h"\n')
    with pytest.raises(BusyboxBuildError) as raised:
        built(Arch.ARMV6, cache_dir, fragments=[fragment])
    error = raised.value
    assert "failed to compile" in error.message and "fwgen-no-such-header.h" in error.message
    log = Path(error.hint.removeprefix("full log: "))
    assert log.is_file() and "fwgen-no-such-header.h" in log.read_text()


@pytest.mark.slow
def test_fragment_setting_that_does_not_stick_is_named(cache_dir, tmp_path):
    fragment = tmp_path / "typo.config"
    fragment.write_text("CONFIG_FWGEN_NO_SUCH_APPLET=y\n")
    with pytest.raises(ConfigError, match=r"typo.config: CONFIG_FWGEN_NO_SUCH_APPLET=y did not take effect"):
        built(Arch.ARMV6, cache_dir, fragments=[fragment])


# -- the gate and the install -----------------------------------------------------------------


@pytest.mark.slow
def test_gate_fails_naming_the_applet_when_the_cpu_cannot_run_it(cache_dir):
    """ARMv7 code on qemu-user's ARM1176 dies of SIGILL: the gate names the first applet."""
    armv7 = built(Arch.ARMV7, cache_dir)
    with pytest.raises(GateError, match=r"^busybox (--list-full|sh) on armv6 crashed"):
        check_busybox(armv7, Arch.ARMV6)


@pytest.mark.slow
def test_install_links_every_applet_the_binary_lists(cache_dir):
    binary = built(Arch.ARMV6, cache_dir).read_bytes()
    rootfs = RootFS()
    rootfs.add_file("/usr/bin/awk", b"#!/bin/sh\n# a package's awk\n", 0o755, provenance="deb:gawk")
    links = install_busybox(rootfs, binary, Arch.ARMV6)
    listed = ["/" + a for a in list_applets(binary, Arch.ARMV6)]
    assert len(listed) > 250 and "/bin/sh" in listed and "/sbin/init" in listed
    assert set(links) == set(listed) - {"/usr/bin/awk"}
    assert rootfs["/usr/bin/awk"].provenance == "deb:gawk"
    assert rootfs["/bin/busybox"].data == binary and rootfs["/bin/busybox"].mode == 0o755
    sh = rootfs["/bin/sh"]
    assert sh.type is EntryType.SYMLINK and rootfs.resolve("/bin/sh").data == binary
