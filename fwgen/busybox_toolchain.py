"""Zig from PyPI as BusyBox's cross toolchain: wrapper scripts named like a GCC toolchain.

BusyBox's Kbuild calls `$(CROSS_COMPILE)gcc`, `ar`, `ranlib`, `objcopy`, `nm` and `strip`.
Each wrapper is a two-line shell script in the build folder that runs the zig binary of the
installed `ziglang` wheel with the target's flags. Zig bundles clang, LLD, musl and the Linux
headers, so no root, no apt and no host cross-compiler are needed.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shlex
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .arch import Arch
from .cache import discard_damaged
from .errors import ToolMissingError
from .files import hash_file, replacing
from .progress import Progress
from .run import run

PREFIX = "zig-"  # CROSS_COMPILE: wrappers are bin/zig-gcc, bin/zig-ar, ...

# Linker options of BusyBox's link line that zig's `cc` driver rejects. Dropping them is
# harmless: they only tune warnings, logging and a map file.
DROPPED_ARGS = ("-Wl,--warn-common", "-Wl,--verbose", "-Wl,-Map,*")

# clang warns on GCC-only options BusyBox passes; -Werror is not used, but the noise hides
# real errors in the log.
QUIET_FLAGS = ("-Wno-unused-command-line-argument", "-Wno-ignored-optimization-argument")


@dataclass(frozen=True)
class Toolchain:
    """A zig binary and its version (part of every BusyBox cache key)."""

    zig: Path
    version: str

    def cc_flags(self, arch: Arch) -> tuple[str, ...]:
        """The compiler flags that select `arch`'s target, CPU and ABI."""
        return ("-target", arch.zig_target, *arch.zig_cpu, *QUIET_FLAGS)

    def write_wrappers(self, bindir: Path, arch: Arch) -> str:
        """Write the toolchain wrappers into `bindir`; return the CROSS_COMPILE prefix."""
        bindir.mkdir(parents=True, exist_ok=True)
        zig = shlex.quote(str(self.zig))
        flags = shlex.join(self.cc_flags(arch))
        cases = "|".join(DROPPED_ARGS)
        cc = (
            # Rebuild "$@" without the arguments zig rejects (POSIX: `for` iterates the
            # original list while `set --` builds the new one).
            # Kbuild's `-Wp,-MD,<file>` bypasses zig's own dependency file and zig then fails
            # with FileNotFound: ask for the same file with -MD -MF instead.
            f'for a; do shift; case "$a" in {cases}) ;;\n'
            '  -Wp,-MD,*) set -- "$@" -MD -MF "${a#-Wp,-MD,}" ;;\n'
            '  *) set -- "$@" "$a" ;; esac; done\n'
            f'exec {zig} cc {flags} "$@"\n'
        )
        scripts = {
            "gcc": cc,
            "cc": cc,
            # overlay builds (fwgen.compile) may hold C++; BusyBox never calls these.
            "c++": f'exec {zig} c++ {flags} "$@"\n',
            "g++": f'exec {zig} c++ {flags} "$@"\n',
            "ar": f'exec {zig} ar "$@"\n',
            "ranlib": f'exec {zig} ranlib "$@"\n',
            "objcopy": f'exec {zig} objcopy "$@"\n',
            # Kbuild only lists symbols with nm; the host's reads any ELF.
            "nm": f'exec {shlex.quote(shutil.which("nm") or "nm")} "$@"\n',
            # `zig objcopy --strip-all` is not implemented and zig emits no symbols without -g;
            # the Makefile is told SKIP_STRIP=y, this is only for stray calls.
            "strip": 'exit 0\n',
        }
        for name, body in scripts.items():
            path = bindir / f"{PREFIX}{name}"
            path.write_text("#!/bin/sh\n" + body)
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return str(bindir / PREFIX)

    def host_cc(self, bindir: Path) -> str:
        """A compiler for Kbuild's host tools: the host's `cc`, else zig for the build machine."""
        found = shutil.which("cc")
        if found:
            return found
        path = bindir / "host-cc"
        path.write_text(f'#!/bin/sh\nexec {shlex.quote(str(self.zig))} cc "$@"\n')
        path.chmod(0o755)
        return str(path)


@functools.cache
def find_toolchain() -> Toolchain:
    """The zig of the installed `ziglang` wheel (raises ToolMissingError without it)."""
    try:
        import ziglang
    except ImportError as e:
        raise ToolMissingError("zig not found", "pip install ziglang (see pyproject.toml)") from e
    zig = Path(ziglang.__file__).parent / "zig"
    if not zig.is_file():
        raise ToolMissingError(f"zig not found at {zig}", "reinstall the ziglang wheel")
    version = run([zig, "version"]).stdout.decode().strip()
    return Toolchain(zig, version)


# -- zig's global cache --------------------------------------------------------------------
# zig keeps musl (libc.a, crt1.o ...) and compiler_rt per target in its global cache and
# never checks them again: a flipped byte would reach every binary linked for that target,
# and a missing file fails every link ("while parsing .../libc.a") until the cache is wiped.
# So fwgen records the SHA-256 of these link inputs once a build has used them, and checks
# them before the next compile. zig cannot rebuild one entry (its index points at the lost
# folder), so a damaged cache is wiped whole: the next build rebuilds musl (1-2 minutes).
# Scanning the ~8,000 folders and hashing the ~25 inputs takes about 0.3 s, paid by
# builds that compile, never by a cache hit.
LINK_INPUTS_RECORD = "fwgen-link-inputs.json"


def _is_link_input(name: str) -> bool:
    return name.endswith((".a", "crt1.o")) or name in ("crti.o", "crtn.o")


def _link_inputs(zig_dir: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    outputs = zig_dir / "o"
    if not outputs.is_dir():
        return found
    with os.scandir(outputs) as folders:
        for folder in folders:
            if not folder.is_dir(follow_symlinks=False):
                continue
            with os.scandir(folder.path) as files:
                for entry in files:
                    if _is_link_input(entry.name) and entry.is_file(follow_symlinks=False):
                        found[f"o/{folder.name}/{entry.name}"] = hash_file(Path(entry.path))
    return found


def _zig_cache_damage(zig_dir: Path) -> str | None:
    """What differs between zig's cache and fwgen's record of its link inputs (None: nothing)."""
    record = zig_dir / LINK_INPUTS_RECORD
    try:
        recorded = json.loads(record.read_text())
    except FileNotFoundError:
        return None  # nothing recorded yet: nothing to hold the files to
    except (OSError, ValueError) as e:
        return f"{LINK_INPUTS_RECORD} unreadable ({e})"
    if not isinstance(recorded, dict):
        return f"{LINK_INPUTS_RECORD} unreadable (not an object)"
    for rel, digest in sorted(recorded.items()):
        try:
            if hash_file(zig_dir / rel) != digest:
                return f"{rel} does not match its recorded SHA-256"
        except FileNotFoundError:
            return f"{rel} is missing"
    return None


def _record_link_inputs(zig_dir: Path) -> None:
    inputs = json.dumps(_link_inputs(zig_dir), indent=0, sort_keys=True) + "\n"
    with replacing(zig_dir / LINK_INPUTS_RECORD, suffix=".part") as out:
        out.write(inputs.encode())


@contextmanager
def checked_zig_cache(zig_dir: Path, progress: Progress) -> Iterator[None]:
    """Hold zig's global cache for a compile: its recorded link inputs are checked first (a
    damaged cache is wiped, with a warning), and recorded afterwards.

    Builds for other targets share the cache and compile at the same time under a shared
    lock; wiping takes the lock exclusively, and so does recording, which is skipped when
    another build is compiling (its files may be half-written); a later build records them.
    """
    zig_dir.mkdir(parents=True, exist_ok=True)
    shared = zig_dir.resolve()  # caches that link to one zig cache share its lock
    with open(shared.with_name(shared.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            if _zig_cache_damage(zig_dir) is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the other builds' compiles
                if (problem := _zig_cache_damage(zig_dir)) is not None:
                    discard_damaged(zig_dir, problem, "zig builds musl again", progress)
                    zig_dir.mkdir(parents=True, exist_ok=True)
                fcntl.flock(lock, fcntl.LOCK_SH)
            yield
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            _record_link_inputs(zig_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
