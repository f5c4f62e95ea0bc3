"""apk's installed database, written at build time so that apk works on the device.

Format (apk-tools 2.12 src/database.c apk_db_write_fdb, src/package.c
apk_pkg_write_index_entry, src/blob.c apk_blob_push_csum):

- /lib/apk/db/installed: one stanza per package, blank-line separated. First the index fields
  in the order C P V A S I T U L o m t c k (lower-case ones only when set), then `D:`, `p:`,
  `i:` (space-separated, only when not empty), `r:` (replaces). Then, per directory the package
  owns in the order it first appears in the package, `F:<dir without leading slash>`, `M:uid:gid:
  mode` (octal) unless it is root's 0755, and per file in that directory, in archive order,
  `R:<name>`, `a:uid:gid:mode` unless it is root's 0644 (a symlink's 0777 is written), and `Z:Q1`
  + base64 SHA-1 of the content (of a symlink: its target).
- /lib/apk/db/triggers: `<Q1 identity> <trigger globs>` per package with triggers.
- /lib/apk/db/scripts.tar: each package's scripts as `<name>-<version>.<Q1 identity>.<action>`.
- /etc/apk/world: the names asked for, sorted, one a line; /etc/apk/arch; /etc/apk/repositories.

tests/test_apkdb.py holds what fwgen writes to what apk-tools 2.12.4 itself writes for the
same Alpine 3.13.4 packages (run under qemu-user).
"""

from __future__ import annotations

import base64
import hashlib
import io
import posixpath
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..rootfs import Entry, EntryType, RootFS
from .apk import VerifiedApk

INSTALLED = "/lib/apk/db/installed"
TRIGGERS = "/lib/apk/db/triggers"
SCRIPTS = "/lib/apk/db/scripts.tar"
WORLD = "/etc/apk/world"
REPOSITORIES = "/etc/apk/repositories"
ARCH = "/etc/apk/arch"
KEYS = "/etc/apk/keys"
# What `apk --initdb` creates besides the files above.
FOLDERS = ("/etc/apk/protected_paths.d", "/var/cache/apk")

_INDEX_FIELDS = (  # (letter, .PKGINFO key) after C, P, V, A, S, I
    ("T", "pkgdesc"), ("U", "url"), ("L", "license"), ("o", "origin"), ("m", "maintainer"),
    ("t", "builddate"), ("c", "commit"), ("k", "provider_priority"),
)
_REQUIRED = {"T", "U", "L"}  # written even when empty, as apk does
_LISTS = (("D", "depend"), ("p", "provides"), ("i", "install_if"), ("r", "replaces"))


@dataclass(frozen=True)
class InstalledApk:
    """A package as apk records it: its verified control data, file size and data entries
    in archive order (paths as the package holds them)."""

    apk: VerifiedApk
    size: int
    entries: Sequence[Entry]

    @property
    def name(self) -> str:
        return self.apk.pkginfo["pkgname"][0]

    @property
    def version(self) -> str:
        return self.apk.pkginfo["pkgver"][0]


def checksum(entry: Entry) -> str:
    """apk's `Z:` of a file or symlink: "Q1" + base64(SHA-1 of its content or target)."""
    content = entry.data if entry.type is EntryType.FILE else entry.target.encode()
    return "Q1" + base64.b64encode(hashlib.sha1(content).digest()).decode()


def installed_stanza(package: InstalledApk) -> str:
    """The package's stanza of /lib/apk/db/installed, with its trailing blank line."""
    info = package.apk.pkginfo
    lines = [f"C:{package.apk.identity}", f"P:{package.name}", f"V:{package.version}"]
    if info.get("arch"):
        lines.append(f"A:{info['arch'][0]}")
    lines += [f"S:{package.size}", f"I:{info.get('size', ['0'])[0]}"]
    for letter, key in _INDEX_FIELDS:
        value = info.get(key, [""])[0]
        if value and value != "0" or letter in _REQUIRED:
            lines.append(f"{letter}:{value}")
    for letter, key in _LISTS:
        tokens = [token for value in info.get(key, []) for token in value.split()]
        if tokens:
            lines.append(f"{letter}:{' '.join(tokens)}")
    lines += _file_lines(package.entries)
    return "\n".join(lines) + "\n\n"


def _file_lines(entries: Iterable[Entry]) -> list[str]:
    """F:/M: per directory in order of first appearance, R:/a:/Z: per file within it."""
    folders: dict[str, list[str]] = {}
    for entry in entries:
        if entry.path == "/":
            continue
        if entry.type is EntryType.DIR:
            acl = [] if (entry.uid, entry.gid, entry.mode) == (0, 0, 0o755) else [_acl("M", entry)]
            folders.setdefault(entry.path.lstrip("/"), []).extend(acl)
            continue
        folder, name = posixpath.split(entry.path.lstrip("/"))
        lines = folders.setdefault(folder, [])
        lines.append(f"R:{name}")
        if (entry.uid, entry.gid, entry.mode) != (0, 0, 0o644):
            lines.append(_acl("a", entry))
        if entry.type in (EntryType.FILE, EntryType.SYMLINK):
            lines.append(f"Z:{checksum(entry)}")
    return [line for folder, lines in folders.items() for line in (f"F:{folder}", *lines)]


def _acl(letter: str, entry: Entry) -> str:
    return f"{letter}:{entry.uid}:{entry.gid}:{entry.mode:o}"


def triggers_file(packages: Sequence[InstalledApk]) -> str:
    lines = [f"{p.apk.identity} {' '.join(p.apk.pkginfo['triggers'][0].split())}"
             for p in packages if p.apk.pkginfo.get("triggers")]
    return "".join(line + "\n" for line in lines)


def scripts_tar(packages: Sequence[InstalledApk], mtime: int) -> bytes:
    """Every package's scripts, named as apk's scripts database names them."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for package in packages:
            for member in package.apk.control:
                if not member.name.startswith(".") or member.name == ".PKGINFO":
                    continue
                info = tarfile.TarInfo(f"{package.name}-{package.version}.{package.apk.identity}{member.name}")
                info.size, info.mode, info.mtime = len(member.data), 0o755, mtime
                info.uname = info.gname = "root"
                tar.addfile(info, io.BytesIO(member.data))
    return out.getvalue()


def write_apk_database(rootfs: RootFS, packages: Sequence[InstalledApk], *, world: Iterable[str],
                       repositories: Sequence[str], arch: str, keys: dict[str, bytes], epoch: int,
                       provenance: str = "fwgen:apk-database") -> None:
    """apk's state for `packages` (in install order): the databases, world, arch,
    repositories, and the signing `keys` (file name -> PEM) /etc/apk/keys does not hold yet."""
    for folder in FOLDERS:
        if folder not in rootfs:
            rootfs.add_dir(folder, 0o755, provenance=provenance)
    files = {
        INSTALLED: "".join(installed_stanza(p) for p in packages).encode(),
        TRIGGERS: triggers_file(packages).encode(),
        SCRIPTS: scripts_tar(packages, epoch),
        WORLD: "".join(f"{name}\n" for name in sorted(set(world))).encode(),
        ARCH: f"{arch}\n".encode(),
        REPOSITORIES: "".join(f"{url}\n" for url in repositories).encode(),
    }
    files.update({f"{KEYS}/{name}": pem for name, pem in sorted(keys.items()) if f"{KEYS}/{name}" not in rootfs})
    for path, data in files.items():
        rootfs.add_file(path, data, 0o644, provenance=provenance)
