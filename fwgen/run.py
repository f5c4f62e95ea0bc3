"""The one helper through which fwgen runs every external program."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

from .errors import RunError, ToolMissingError

log = logging.getLogger("fwgen.run")

# Which Debian package brings a program, for the "not found" hint.
PACKAGE_OF = {
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-system-arm": "qemu-system-arm",
    "qemu-system-mips": "qemu-system-mips",
    "qemu-system-mipsel": "qemu-system-mips",
    "qemu-system-mips64el": "qemu-system-mips",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "cpio": "cpio",
    "fsck.vfat": "dosfstools",
    "mdir": "mtools",
    "mcopy": "mtools",
}


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A fixed environment for child programs: C.UTF-8 locale, SOURCE_DATE_EPOCH passed on."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "SOURCE_DATE_EPOCH")}
    env["LANG"] = env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program to completion, capturing its output.

    Raises ToolMissingError when the program is not installed and RunError (with the tail of
    stderr) when it fails and `check` is set.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("+ %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args, input=input, capture_output=True, env=tool_env(env), cwd=cwd, timeout=timeout
        )
    except FileNotFoundError as e:
        raise ToolMissingError(
            f"{args[0]} not found", f"install {PACKAGE_OF.get(args[0], args[0])}"
        ) from e
    if check and proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RunError(args, proc.returncode, " | ".join(tail))
    return proc
