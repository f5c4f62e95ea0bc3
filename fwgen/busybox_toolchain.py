"""Zig from PyPI as BusyBox's cross toolchain: wrapper scripts named like a GCC toolchain.

BusyBox's Kbuild calls `$(CROSS_COMPILE)gcc`, `ar`, `ranlib`, `objcopy`, `nm` and `strip`.
Each wrapper is a two-line shell script in the build folder that runs the zig binary of the
installed `ziglang` wheel with the target's flags. Zig bundles clang, LLD, musl and the Linux
headers, so no root, no apt and no host cross-compiler are needed.
"""

from __future__ import annotations

import functools
import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from .arch import Arch
from .errors import ToolMissingError
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
