"""Read any image fwgen writes: filesystems (squashfs, initramfs cpio) into one listing shape,
bootloader images (FIT, legacy uImage) into a description with their checks."""

from __future__ import annotations

import datetime
import hashlib
import stat
from pathlib import Path

from ..dtb import DeviceTree
from ..errors import FormatError, UserError
from ..rootfs import Entry, EntryType
from .cpio import initramfs_rootfs, read_initramfs
from .fit import is_fdt, read_fit
from .fitsig import load_public_key, read_signatures
from .read import is_squashfs
from .squashfs import SquashfsEntry, read_squashfs
from .uimage import is_uimage, read_uimage


def list_image(path: Path, *, digests: bool = False) -> tuple[str, list[dict]]:
    """(kind, rows): one row per entry with path, type, mode string, uid, gid, size, target;
    with `digests`, a regular file's row also has the SHA-256 of its content (fwgen diff).

    Rows follow the image's own records, not a RootFS: a listing shows an archive's order, its
    repeated members and no directory it lacks, and a squashfs's files are read only for digests."""
    if is_squashfs(path):
        with read_squashfs(path) as image:
            return "squashfs", [_row(e, image.read_file(e.path) if digests and e.type is EntryType.FILE else None)
                                for e in image.entries()]
    entries = [m.entry(str(path)) for m in read_initramfs(path)]
    return "initramfs", [_row(e, e.data if digests and e.type is EntryType.FILE else None) for e in entries]


def describe_boot_image(path: Path, key: Path | None = None) -> tuple[str, dict, bool] | None:
    """(kind, description, every check passed) for a FIT or a legacy uImage, else None. With
    `key` (a PEM public or private key) a FIT's signatures are verified with it."""
    with open(path, "rb") as f:
        head = f.read(64)
    if is_uimage(head):
        facts = read_uimage(path.read_bytes(), where=str(path)).describe()
        return "uimage", facts, facts["header_crc_ok"] and facts["data_crc_ok"]
    if is_fdt(head):
        blob = path.read_bytes()
        fit = read_fit(blob, where=str(path))
        signatures = read_signatures(blob, DeviceTree.parse(blob, where=str(path)),
                                     load_public_key(key) if key else None)
        ok = all(h.ok is not False for i in fit.images for h in i.hashes)
        ok = ok and all(s.ok is not False for s in signatures)
        return "fit", {**fit.describe(), "signatures": [s.describe() for s in signatures]}, ok
    return None


def read_image_file(path: Path, member: str) -> bytes:
    """The content of one regular file of the image, or of one image of a FIT by name."""
    with open(path, "rb") as f:
        if is_fdt(f.read(4)):
            return read_fit(path.read_bytes(), where=str(path)).image(member).data
    wanted = "/" + member.strip("/")
    if is_squashfs(path):  # one file read, not the whole image
        with read_squashfs(path) as image:
            return image.read_file(wanted)
    entry = initramfs_rootfs(path).get(wanted)
    if entry is None:
        raise FormatError(f"{path}: no {wanted} in the image")
    if entry.type is not EntryType.FILE:
        raise UserError(f"{path}: {wanted} is a {entry.type.value}, not a file")
    return entry.data


def _row(e: Entry | SquashfsEntry, content: bytes | None = None) -> dict:
    row = {
        "path": e.path, "type": e.type.value, "mode": stat.filemode(e.type.format_bits | (e.mode & 0o7777)),
        "uid": e.uid, "gid": e.gid, "size": e.size, "target": e.target or "",
        "rdev": list(e.rdev) if e.type in (EntryType.CHARDEV, EntryType.BLOCKDEV) else None,
    }
    if content is not None:
        row["sha256"] = hashlib.sha256(content).hexdigest()
    return row


def format_boot_image(kind: str, facts: dict) -> list[str]:
    """The lines `fwgen inspect` prints for a FIT or a uImage."""
    created = _utc(facts.get("time") if kind == "uimage" else facts.get("timestamp"))
    if kind == "uimage":
        lines = [f"uImage {facts['name']!r}: {facts['os']} {facts['arch']} {facts['type']}, "
                 f"compression {facts['compression']}, {facts['size']:,} bytes, created {created}",
                 f"  load {facts['load']:#010x} entry {facts['entry']:#010x}",
                 f"  header CRC {facts['header_crc']:#010x} {_verdict(facts['header_crc_ok'])}, "
                 f"data CRC {facts['data_crc']:#010x} {_verdict(facts['data_crc_ok'])}"]
        lines += [f"  file {n}: {size:,} bytes" for n, size in enumerate(facts["files"])]
        if facts["trailing_bytes"]:
            lines.append(f"  {facts['trailing_bytes']:,} bytes follow the image data")
        return lines
    lines = [f"FIT {facts['description']!r}, created {created}, default configuration {facts['default']}"]
    for i in facts["images"]:
        where = " ".join(f"{k} {i[k]:#x}" for k in ("load", "entry") if i[k] is not None)
        hashes = ", ".join(f"{h['algo']} {h['value']} {_verdict(h['ok'])}" for h in i["hashes"]) or "no hash"
        lines.append(f"  {i['name']}: {i['type']} {i['arch']} {i['os']}, compression {i['compression']}, "
                     f"{i['size']:,} bytes{', ' + where if where else ''}; {hashes}")
    for name, refs in facts["configurations"].items():
        lines.append(f"  configuration {name}: " + ", ".join(f"{k} {v}" for k, v in refs.items()))
    for s in facts.get("signatures", []):
        lines.append(f"  configuration {s['config']} signature {s['algo']} key {s['key-name-hint']!r} over "
                     f"{', '.join(s['sign-images'])}: {_verdict(s['verified'])}")
    return lines


def _verdict(ok: bool | None) -> str:
    return {True: "OK", False: "MISMATCH", None: "(not checked)"}[ok]


def _utc(epoch: int | None) -> str:
    if epoch is None:
        return "(no timestamp)"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
