"""What an image holds that gives power to whoever finds it: device nodes, setuid and setgid
files, files anyone may write. Listed in the manifest and by `fwgen audit`; the board's
`policy` allows, warns about or refuses each kind when a package brings it.

Device nodes and modes fwgen writes itself (/dev/console, /dev/null, /tmp) and those the
board's own overlays declare are the board's choice, so the policy looks only at packages.
"""

from __future__ import annotations

import fnmatch
import stat
from dataclasses import dataclass

from .board import Policy
from .errors import UserError, quoted
from .rootfs import Entry, EntryType, RootFS

DEVICE, SETUID, SETGID, WORLD_WRITABLE = "device node", "setuid", "setgid", "world-writable"


@dataclass(frozen=True)
class SpecialFile:
    """One path that needs a second look, and why."""

    path: str
    kind: str  # DEVICE, SETUID, SETGID or WORLD_WRITABLE
    mode: int  # st_mode: type and permission bits
    uid: int
    gid: int
    rdev: tuple[int, int]
    provenance: str

    def describe(self, *, origin: bool = True) -> str:
        """`/dev/mem: device node c 1,1 mode 0666 owner 0:0 (from ipk:evil)`, names quoted."""
        device = f" {'c' if stat.S_ISCHR(self.mode) else 'b'} {self.rdev[0]},{self.rdev[1]}" if self.kind == DEVICE else ""
        source = f" (from {quoted(self.provenance)})" if origin and self.provenance else ""
        return (f"{quoted(self.path)}: {self.kind}{device} mode {stat.S_IMODE(self.mode):04o} "
                f"owner {self.uid}:{self.gid}{source}")

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "mode": f"{stat.S_IMODE(self.mode):04o}",
                "owner": f"{self.uid}:{self.gid}", "rdev": list(self.rdev) if self.kind == DEVICE else None,
                "from": self.provenance}


def find_special_files(rootfs: RootFS) -> list[SpecialFile]:
    """Every device node, setuid or setgid file and world-writable path of `rootfs`, in
    the model's order."""
    return [special for entry in rootfs for special in _special_kinds(entry)]


def _special_kinds(entry: Entry) -> list[SpecialFile]:
    kinds = []
    if entry.type in (EntryType.CHARDEV, EntryType.BLOCKDEV):
        kinds.append(DEVICE)
    if entry.type is EntryType.FILE and entry.mode & stat.S_ISUID:
        kinds.append(SETUID)
    if entry.type is EntryType.FILE and entry.mode & stat.S_ISGID:
        kinds.append(SETGID)
    # A symlink's mode means nothing, a device node is listed as one (/dev/null is 0666),
    # and a folder with the sticky bit (/tmp) lets no one remove what others put there.
    shared_folder = entry.type is EntryType.DIR and entry.mode & stat.S_ISVTX
    writable_kind = entry.type not in (EntryType.SYMLINK, EntryType.CHARDEV, EntryType.BLOCKDEV)
    if entry.mode & stat.S_IWOTH and writable_kind and not shared_folder:
        kinds.append(WORLD_WRITABLE)
    return [SpecialFile(entry.path, kind, entry.st_mode, entry.uid, entry.gid, entry.rdev, entry.provenance)
            for kind in kinds]


@dataclass(frozen=True)
class PolicyOutcome:
    special: SpecialFile
    rule: str  # the policy key that decided: "device_nodes", "setuid", "world_writable"
    action: str  # allow, warn, refuse


def apply_policy(specials: list[SpecialFile], policy: Policy, packages: dict[str, str]) -> list[PolicyOutcome]:
    """What `policy` says about each special file a package brought (`packages` maps the
    provenance of a package's files to how a message names the package); UserError for the
    first one it refuses, naming the package and the path."""
    outcomes = []
    for special in specials:
        if special.provenance not in packages:
            continue
        rule, action = _rule_for(special, policy)
        if action == "refuse":
            raise UserError(f"package {packages[special.provenance]}: {special.describe(origin=False)}: "
                            f"refused by the board's policy.{rule}", f"set policy.{rule} to warn or allow to take it")
        outcomes.append(PolicyOutcome(special, rule, action))
    return outcomes


def _rule_for(special: SpecialFile, policy: Policy) -> tuple[str, str]:
    if special.kind == DEVICE:
        return "device_nodes", policy.device_nodes
    if special.kind in (SETUID, SETGID):
        if any(fnmatch.fnmatchcase(special.path, pattern) for pattern in policy.setuid_allowed):
            return "setuid_allowed", "allow"
        return "setuid", policy.setuid
    return "world_writable", policy.world_writable
