"""Package maintainer scripts. fwgen builds rootless and cross-arch, so it runs none of them
while it builds; instead each script a package carries gets one decision, recorded in the
manifest (`package_scripts`) and never dropped unsaid:

- `build`: fwgen performs a declared equivalent at build time. BusyBox's `busybox --install
  -s` (Alpine's .post-install) is the applet links install_busybox made from the binary's own
  applet list; `addgroup -S -g GID NAME` (alpine-baselayout's .pre-install) adds the group to
  /etc/group.
- `first-boot`: deferred configuration, as debootstrap's second stage and OpenWrt's first boot
  do. The script is copied to PACKAGE_SCRIPTS with the argument its package manager passes on
  a fresh install, and /sbin/fwgen-package-scripts (base overlay, from rc.d) runs the list once
  on the first boot of a fresh root, in install order, logging to syslog and
  /var/log/package-scripts.log; a failure is printed on the console and makes
  `fwgen-package-scripts status` (a base check) fail. Pre-install scripts run there too, after
  the files they would have preceded are in place: fwgen unpacked them at build time.
- `not-run`: upgrade, removal and trigger scripts (and debconf's `config`): fwgen installs once
  and never upgrades or removes; the device's package manager runs them when it does (apk
  keeps them in its scripts database, which fwgen writes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .errors import UserError
from .fetch import FetchedPackage, read_control_files
from .guest import PACKAGE_SCRIPTS
from .rootfs import RootFS

# The scripts a package manager runs when it installs a package afresh, with the argument it
# passes (apk: the new version; dpkg and opkg: the action), per format.
INSTALL_SCRIPTS = {
    "apk": {".pre-install": "{version}", ".post-install": "{version}"},
    "deb": {"preinst": "install", "postinst": "configure"},
    "ipk": {"preinst": "install", "postinst": "configure"},
}
# The other executable scripts of each format's control part.
OTHER_SCRIPTS = {
    "deb": {"prerm", "postrm", "config"},
    "ipk": {"prerm", "postrm", "postinst-pkg", "prerm-pkg"},
}
# Why a script that is not an install script is not run, per format (and per script where
# the format's rule does not fit).
_NEVER = "an upgrade, removal, trigger or debconf script: fwgen installs once and never upgrades or removes"
NOT_RUN = {
    "apk": f"{_NEVER} (apk on the device runs it from /lib/apk/db/scripts.tar when it does)",
    "deb": f"{_NEVER} (the image has no dpkg to do either)",
    "ipk": f"{_NEVER} (opkg on the device runs it from /usr/lib/opkg/info when it does)",
    ("ipk", "postinst-pkg"): "called by the package's own postinst (OpenWrt's default_postinst in /lib/functions.sh), "
                             "not by opkg: it runs when that postinst does",
    ("ipk", "prerm-pkg"): "called by the package's own prerm (OpenWrt's default_prerm), not by opkg",
}
_COMMENT = re.compile(r"^\s*(#.*)?$")
_BUSYBOX_INSTALL = re.compile(r"(exec )?/bin/busybox (--install -s|mkdir -p( \"?/[a-z/]+\"?)+)")
_ADDGROUP = re.compile(r"addgroup -S -g (?P<gid>\d+) (?P<name>[a-z_][a-z0-9_-]*)( 2>/dev/null)?")
_EXIT_0 = re.compile(r"exit 0")
GROUP_FILE = "/etc/group"


@dataclass(frozen=True)
class ScriptDecision:
    """What became of one package script: the manifest's record of it."""

    package: str
    version: str
    format: str
    script: str
    action: str  # build, first-boot or not-run
    detail: str
    file: str = ""  # the deferred copy in the image

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v != ""}


def script_names(format_: str, files: dict[str, bytes]) -> list[str]:
    """The executable scripts among a package's control files, in archive order."""
    if format_ == "apk":
        return [name for name in files if name.startswith(".") and name != ".PKGINFO"]
    known = set(INSTALL_SCRIPTS[format_]) | OTHER_SCRIPTS.get(format_, set())
    return [name for name in files if name in known]


def handle_package_scripts(rootfs: RootFS, packages: Sequence[FetchedPackage], *,
                           busybox_package: str | None, applets: int,
                           skip: Mapping[str, str] | None = None) -> list[ScriptDecision]:
    """Decide every script of `packages` (install order), perform the build-time equivalents
    on `rootfs` and stage the deferred ones with their run list; return the decisions. The
    scripts of a package in `skip` (the board's skip_package_scripts) are not run, for the
    reason the board gives."""
    decisions: list[ScriptDecision] = []
    deferred: list[str] = []
    for fetched in packages:
        package = fetched.package
        files = read_control_files(fetched)
        names = script_names(package.format, files)
        install = INSTALL_SCRIPTS[package.format]
        for name in sorted(names, key=lambda n: list(install).index(n) if n in install else len(install)):
            if skip and package.name in skip:
                decisions.append(ScriptDecision(package.name, package.version, package.format, name, "not-run",
                                                f"the board's skip_package_scripts: {skip[package.name]}"))
                continue
            decision = _decide(rootfs, fetched, name, files[name], busybox_package, applets)
            if decision.action == "first-boot":
                staged = f"{len(deferred) + 1:03d}-{package.name}.{name.lstrip('.')}"
                rootfs.add_file(f"{PACKAGE_SCRIPTS}/{staged}", files[name], 0o755, provenance=f"{package.format}:{package.name}")
                deferred.append(f"{staged} {install[name].format(version=package.version)}")
                decision = ScriptDecision(**{**asdict(decision), "file": f"{PACKAGE_SCRIPTS}/{staged}"})
            decisions.append(decision)
    if deferred:
        rootfs.add_file(f"{PACKAGE_SCRIPTS}/list", "".join(f"{line}\n" for line in deferred).encode(),
                        provenance="fwgen:package-scripts")
    return decisions


def _decide(rootfs: RootFS, fetched: FetchedPackage, name: str, body: bytes, busybox_package: str | None,
            applets: int) -> ScriptDecision:
    package = fetched.package
    record = {"package": package.name, "version": package.version, "format": package.format, "script": name}
    if name not in INSTALL_SCRIPTS[package.format]:
        return ScriptDecision(**record, action="not-run", detail=NOT_RUN.get((package.format, name), NOT_RUN[package.format]))
    commands = [line.strip() for line in body.decode("utf-8", "replace").splitlines()
                if not _COMMENT.match(line)]
    if package.name == busybox_package and commands and all(_BUSYBOX_INSTALL.fullmatch(c) for c in commands):
        return ScriptDecision(**record, action="build",
                              detail=f"busybox --install -s: the {applets} applet links fwgen made from the "
                                     f"binary's own applet list")
    groups = [m for m in map(_ADDGROUP.fullmatch, commands) if m]
    if groups and all(_ADDGROUP.fullmatch(c) or _EXIT_0.fullmatch(c) for c in commands):
        added = [add_group(rootfs, m["name"], int(m["gid"]), f"{package.name} {name}") for m in groups]
        return ScriptDecision(**record, action="build", detail="addgroup: " + ", ".join(added) + " in /etc/group")
    return ScriptDecision(**record, action="first-boot",
                          detail="run once on the first boot by /sbin/fwgen-package-scripts, as "
                                 f"{package.format}'s {name} {INSTALL_SCRIPTS[package.format][name].format(version=package.version)}")


def add_group(rootfs: RootFS, name: str, gid: int, why: str) -> str:
    """Add `name:x:gid:` to the image's /etc/group unless it is there; a gid another group
    holds is an error naming the script that asked for it."""
    entry = rootfs.get(GROUP_FILE)
    text = entry.data.decode() if entry is not None else ""
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return f"group {name} ({fields[2]}) already there"
        if len(fields) > 2 and fields[2] == str(gid):
            raise UserError(f"{why}: addgroup {name} with gid {gid}, which group {fields[0]} of {GROUP_FILE} has")
    mode = entry.mode if entry is not None else 0o644
    rootfs.add_file(GROUP_FILE, f"{text}{name}:x:{gid}:\n".encode(), mode, provenance="fwgen:package-scripts")
    return f"group {name} ({gid}) added"
