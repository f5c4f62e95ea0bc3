"""A BusyBox binary run under qemu-user: the applets it lists, and the functional gate that
a freshly built one runs its applets correctly.

The build can succeed and the binary still be broken: clang miscompiles BusyBox's globals
pointer trick (awk, hush, less crash) and musl's PIC `sigsetjmp` called from non-PIC MIPS code
crashes vi. So every build runs these checks before it is published. Each check runs one
applet in its own qemu-user process (no binfmt_misc needed), feeding stdin and comparing the
result with what Python's own libraries (gzip, lzma, bz2, tarfile, hashlib) compute.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import posixpath
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .arch import Arch
from .errors import FwgenError, RunError
from .run import run

TIMEOUT = 60.0
TEXT = b"".join(b"line %d of the fwgen busybox gate\n" % i for i in range(200))


class GateError(FwgenError):
    """An applet crashed or printed the wrong result under qemu-user."""


@dataclass(frozen=True)
class AppletCheck:
    """Run `busybox <args>` with `stdin`; `verify(stdout, workdir)` says what is wrong, or None."""

    applet: str
    args: tuple[str, ...]
    verify: Callable[[bytes, Path], str | None]
    stdin: bytes = b""
    files: tuple[tuple[str, bytes], ...] = ()  # created in the working folder first
    exit: int = 0


def _equals(expected: bytes) -> Callable[[bytes, Path], str | None]:
    def verify(out: bytes, _: Path) -> str | None:
        return None if out == expected else f"printed {out[:80]!r}, expected {expected[:80]!r}"

    return verify


def _decodes_to(decompress: Callable[[bytes], bytes], expected: bytes) -> Callable[[bytes, Path], str | None]:
    def verify(out: bytes, _: Path) -> str | None:
        try:
            return None if decompress(out) == expected else "output decompresses to other data"
        except Exception as e:  # any decoder failure is the applet's fault here
            return f"output does not decompress: {e}"

    return verify


def _tar_holds(name: str, data: bytes) -> Callable[[bytes, Path], str | None]:
    def verify(out: bytes, _: Path) -> str | None:
        try:
            with tarfile.open(fileobj=io.BytesIO(out)) as tar:
                member = tar.extractfile(name)
                got = member.read() if member else None
        except (tarfile.TarError, KeyError) as e:
            return f"output is not a tar holding {name}: {e}"
        return None if got == data else f"{name} in the archive differs"

    return verify


def _newc_holds(name: str, data: bytes) -> Callable[[bytes, Path], str | None]:
    # newc: "070701", 13 eight-digit hex fields (namesize is the 12th, filesize the 7th),
    # the name NUL-terminated and padded to 4 bytes, then the data padded to 4 bytes.
    def verify(out: bytes, _: Path) -> str | None:
        if out[:6] != b"070701":
            return f"output does not start with the newc magic: {out[:6]!r}"
        fields = [int(out[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        filesize, namesize = fields[6], fields[11]
        got_name = out[110 : 110 + namesize - 1].decode()
        start = (110 + namesize + 3) & ~3
        if got_name != name or out[start : start + filesize] != data:
            return f"first member is {got_name!r} with other data"
        return None

    return verify


def _vi_wrote(name: str, expected: bytes) -> Callable[[bytes, Path], str | None]:
    def verify(_: bytes, workdir: Path) -> str | None:
        got = (workdir / name).read_bytes() if (workdir / name).exists() else None
        return None if got == expected else f"{name} holds {got!r}, expected {expected!r}"

    return verify


def _tar_input() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("dir/hello.txt")
        info.size = len(TEXT)
        tar.addfile(info, io.BytesIO(TEXT))
    return buf.getvalue()


def applet_checks() -> list[AppletCheck]:
    """The applets every BusyBox build must run correctly."""
    xz = lzma.compress(TEXT, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    return [
        AppletCheck("sh", ("sh", "-c", 'x=6; for i in 1 2 3; do x=$((x*i)); done; echo "$x"'), _equals(b"36\n")),
        AppletCheck("hush", ("hush", "-c", 'f() { echo "$1-$2"; }; f a b; echo $((7*6))'), _equals(b"a-b\n42\n")),
        AppletCheck("awk", ("awk", '{n++; s+=$2} END {printf "%d %d\\n", n, s}'), _equals(b"200 19900\n"),
                    stdin=b"".join(b"x %d\n" % i for i in range(200))),
        AppletCheck("sed", ("sed", "-n", "s/line \\([0-9]*\\)5 .*/\\1/p"), _equals(b"\n" + b"".join(b"%d\n" % i for i in range(1, 20))), stdin=TEXT),
        AppletCheck("grep", ("grep", "-c", "-E", "line 1[0-9]+ "), _equals(b"110\n"), stdin=TEXT),
        AppletCheck("sort", ("sort", "-n", "-r"), _equals(b"10\n9\n2\n1\n"), stdin=b"2\n10\n1\n9\n"),
        AppletCheck("gzip", ("gzip", "-c"), _decodes_to(gzip.decompress, TEXT), stdin=TEXT),
        AppletCheck("gunzip", ("gunzip", "-c"), _equals(TEXT), stdin=gzip.compress(TEXT)),
        AppletCheck("bzip2", ("bzip2", "-c"), _decodes_to(bz2.decompress, TEXT), stdin=TEXT),
        AppletCheck("unxz", ("unxz", "-c"), _equals(TEXT), stdin=xz),
        AppletCheck("sha256sum", ("sha256sum",), _equals(hashlib.sha256(TEXT).hexdigest().encode() + b"  -\n"), stdin=TEXT),
        AppletCheck("tar", ("tar", "-xOf", "-", "dir/hello.txt"), _equals(TEXT), stdin=_tar_input()),
        AppletCheck("tar", ("tar", "-cf", "-", "a.txt"), _tar_holds("a.txt", TEXT), files=(("a.txt", TEXT),)),
        AppletCheck("cpio", ("cpio", "-o", "-H", "newc"), _newc_holds("a.txt", TEXT), stdin=b"a.txt\n", files=(("a.txt", TEXT),)),
        AppletCheck("dc", ("dc",), _equals(b"42\n1024\n"), stdin=b"6 7 * p 2 10 ^ p\n"),
        AppletCheck("diff", ("diff", "-u", "a", "b"), _equals(b"--- a\n+++ b\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n"), exit=1,
                    files=(("a", b"one\ntwo\n"), ("b", b"one\nTWO\n"))),
        AppletCheck("less", ("less",), _equals(TEXT), stdin=TEXT),
        # vi reads keystrokes from stdin even when it is not a terminal. Without a terminal it
        # asks for the screen size (ESC [6n) and reads the reply first: "ESC [ rows ; cols R".
        # Then an ex substitution and :wq (an ESC key would merge with the next keys into an
        # escape sequence, as they arrive in one read).
        AppletCheck("vi", ("vi", "v.txt"), _vi_wrote("v.txt", b"fwgen\n"), files=(("v.txt", b"hello\n"),),
                    stdin=b"\x1b[24;80R:s/hello/fwgen/\r:wq\r"),
    ]


def check_busybox(binary: Path, arch: Arch, checks: list[AppletCheck] | None = None) -> list[str]:
    """Run the checks of every applet the binary has (a board may leave some out); raise
    GateError naming the first applet that crashes or prints a wrong result. Returns the
    applets checked. `sh` is required: without a shell there is no system to boot."""
    try:
        present = {posixpath.basename(a) for a in list_applets(binary.read_bytes(), arch)}
    except RunError as e:
        raise GateError(f"busybox --list-full on {arch.value} crashed (exit {e.returncode}): {e.stderr_tail}") from e
    if "sh" not in present:
        raise GateError(f"busybox for {arch.value} has no sh applet")
    checked = []
    for check in checks if checks is not None else applet_checks():
        if check.applet in present:
            _run_check(binary, arch, check)
            checked.append(check.applet)
    return checked


def list_applets(binary: bytes, arch: Arch, sysroot: Mapping[str, bytes] | None = None) -> list[str]:
    """The binary's `--list-full` (paths like `bin/sh`, `usr/bin/awk`), run under qemu-user
    (with `sysroot`'s files, image path -> bytes, as its root for the loader and libraries)."""
    with tempfile.TemporaryDirectory(prefix="fwgen-busybox-") as tmp:
        path = Path(tmp) / "busybox"
        path.write_bytes(binary)
        path.chmod(0o755)
        root = Path(tmp) / "sysroot"
        for image_path, data in (sysroot or {}).items():
            target = root / image_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        argv = qemu_user_argv(arch, path, "--list-full")
        if sysroot:
            argv[1:1] = ["-L", str(root)]
        out = run(argv, timeout=60).stdout.decode()
    applets = [line.strip() for line in out.splitlines() if line.strip()]
    for applet in applets:
        if applet.startswith("/") or ".." in applet.split("/"):
            raise GateError(f"busybox --list-full printed an unsafe path: {applet!r}")
    return applets


def qemu_user_argv(arch: Arch, binary: Path, *args: str) -> list[str]:
    """The command line running a foreign `binary` under qemu-user for `arch`."""
    cpu = ["-cpu", arch.qemu_user_cpu] if arch.qemu_user_cpu else []
    return [arch.qemu_user, *cpu, str(binary), *args]


def _run_check(binary: Path, arch: Arch, check: AppletCheck) -> None:
    with tempfile.TemporaryDirectory(prefix="fwgen-gate-") as tmp:
        workdir = Path(tmp)
        for name, data in check.files:
            (workdir / name).write_bytes(data)
        argv = qemu_user_argv(arch, binary.resolve(), *check.args)
        proc = run(argv, check=False, input=check.stdin, cwd=workdir, timeout=TIMEOUT)
        where = f"busybox {check.applet} on {arch.value}"
        if proc.returncode < 0 or proc.returncode >= 128 or b"uncaught target signal" in proc.stderr:
            raise GateError(f"{where} crashed (exit {proc.returncode}): {_tail(proc.stderr)}")
        if proc.returncode != check.exit:
            raise GateError(f"{where} exited with {proc.returncode}, expected {check.exit}: {_tail(proc.stderr)}")
        problem = check.verify(proc.stdout, workdir)
        if problem:
            raise GateError(f"{where} {problem}")


def _tail(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return " | ".join(lines[-3:]) or "no output on stderr"
