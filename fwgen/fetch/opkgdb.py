"""opkg's status database, written at build time for the OpenWrt packages of an image, so
that opkg on the device knows what is installed (as OpenWrt's image builder leaves it).

Format (openwrt/opkg-lede libopkg/pkg.c pkg_print_status and pkg_formatted_field,
libopkg/pkg_hash.c file_hash_set_file_owner, libopkg/opkg_install.c):

- /usr/lib/opkg/status: one stanza per installed package, blank-line terminated, fields in
  the order Package, ABIVersion, Version, Depends, Recommends, Suggests, Provides, Replaces,
  Conflicts, Status, Essential, Architecture, Conffiles, Installed-Time, Auto-Installed; each
  only when set. Relations are written `name (<op><version>)`, comma-separated, alternatives
  joined by ` | `; Provides leaves out the package itself. Status is `<want> <flags>
  <state>`: `install user installed` for a package asked for, `install ok installed` with
  `Auto-Installed: yes` for one that came as a dependency. Conffiles: ` <path> <md5>` lines.
- /usr/lib/opkg/info/<name>.list: the paths of the package's files and symlinks, one a line;
  directories are left out (opkg skips names ending in '/').
- /usr/lib/opkg/info/<name>.<file>: every file of the control archive (control, conffiles,
  the scripts), as opkg extracts them with the package name as prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..rootfs import Entry, EntryType, RootFS
from .ipk import parse_relations, parse_stanzas

STATUS = "/usr/lib/opkg/status"
INFO = "/usr/lib/opkg/info"
SCRIPTS = {"preinst", "postinst", "prerm", "postrm", "postinst-pkg", "prerm-pkg"}


@dataclass(frozen=True)
class InstalledIpk:
    """A package as opkg records it: its control files (control, conffiles, scripts) and
    data entries in archive order."""

    control_files: dict[str, bytes]
    entries: Sequence[Entry]

    @property
    def control(self) -> dict[str, str]:
        [stanza] = parse_stanzas(self.control_files["control"].decode("utf-8", "replace"), "control")
        return stanza

    @property
    def name(self) -> str:
        return self.control["Package"]


def _relations(text: str, where: str, *, alternatives: bool = True, versions: bool = True) -> list[str]:
    """Relation items as opkg prints them: `name (opversion)`, alternatives ` | ` (only the
    first where opkg prints one, as for Conflicts)."""
    items = []
    for group in parse_relations(text, where):
        options = [f"{r.name} ({r.op}{r.version})" if r.op and versions else r.name
                   for r in (group if alternatives else group[:1])]
        items.append(" | ".join(options))
    return items


def status_stanza(package: InstalledIpk, *, requested: bool, installed_time: int) -> str:
    """The package's stanza of /usr/lib/opkg/status, with its trailing blank line."""
    control = package.control
    where = f"{package.name}: control"
    lines = [f"Package: {package.name}"]
    if control.get("ABIVersion"):
        lines.append(f"ABIVersion: {control['ABIVersion']}")
    lines.append(f"Version: {control['Version']}")
    for field in ("Depends", "Recommends", "Suggests"):
        if control.get(field):
            lines.append(f"{field}: {', '.join(_relations(control[field], where))}")
    provides = [p for p in _relations(control.get("Provides", ""), where, versions=False) if p != package.name]
    if provides:
        lines.append(f"Provides: {', '.join(provides)}")
    if control.get("Replaces"):
        lines.append(f"Replaces: {', '.join(_relations(control['Replaces'], where, versions=False))}")
    if control.get("Conflicts"):
        lines.append(f"Conflicts: {', '.join(_relations(control['Conflicts'], where, alternatives=False))}")
    lines.append("Status: install user installed" if requested else "Status: install ok installed")
    if control.get("Essential", "").lower() == "yes":
        lines.append("Essential: yes")
    if control.get("Architecture"):
        lines.append(f"Architecture: {control['Architecture']}")
    conffiles = _conffiles(package)
    if conffiles:
        lines += ["Conffiles:", *(f" {path} {md5}" for path, md5 in conffiles)]
    lines.append(f"Installed-Time: {installed_time}")
    if not requested:
        lines.append("Auto-Installed: yes")
    return "\n".join(lines) + "\n\n"


def _conffiles(package: InstalledIpk) -> list[tuple[str, str]]:
    """Each listed conffile with the MD5 of the content the package installs."""
    listed = package.control_files.get("conffiles", b"").decode("utf-8", "replace").split()
    content = {e.path: e.data for e in package.entries if e.type is EntryType.FILE}
    return [(path, hashlib.md5(content[path]).hexdigest()) for path in listed if path in content]


def file_list(package: InstalledIpk) -> str:
    """info/<name>.list: the package's files and symlinks, absolute, in archive order."""
    return "".join(f"{e.path}\n" for e in package.entries if e.type is not EntryType.DIR and e.path != "/")


def write_opkg_database(rootfs: RootFS, packages: Sequence[InstalledIpk], *, requested: Collection[str],
                        installed_time: int, provenance: str = "fwgen:opkg-database") -> None:
    """opkg's status and info files for `packages` (in install order)."""
    status = "".join(status_stanza(p, requested=p.name in requested, installed_time=installed_time)
                     for p in packages)
    rootfs.add_file(STATUS, status.encode(), 0o644, provenance=provenance)
    for package in packages:
        rootfs.add_file(f"{INFO}/{package.name}.list", file_list(package).encode(), 0o644, provenance=provenance)
        for name, data in package.control_files.items():
            mode = 0o755 if name in SCRIPTS else 0o644
            rootfs.add_file(f"{INFO}/{package.name}.{name}", data, mode, provenance=provenance)
