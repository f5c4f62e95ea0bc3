"""OpenWrt's sysupgrade image, the update form of router boards (FORMATS.md; openwrt/fwtool
fwimage.h and fwtool.c, scripts/sysupgrade-tar.sh):

    tar: sysupgrade-<board>/  CONTROL ("BOARD=<board>")  kernel  root
    [fwimage header + metadata JSON][trailer type 1]
    [usign signature of everything before it][trailer type 0]   (signed images)

A trailer is 16 bytes read from the end of the file: magic "FWx0", a CRC32 (fwtool's: start
~0, no final xor) of the whole file up to the end of its payload, the type, 3 pad bytes and
the payload's size plus its own 16. OpenWrt's sysupgrade reads the metadata with `fwtool -i`
and checks `supported_devices`; OpenWrt 19.07 checks the signature with
`fwtool -T -s /dev/null IMAGE | usign -V -m - -x SIG` (the signature covers the tar and the
metadata trailer). Later releases wrap the signature in a ucert certificate; fwgen writes the
plain usign signature, which usign and signify verify as they are.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from construct import Const, Int8ub, Int32ub, Padding, Struct

from . import usign
from .bundle import tar_member
from .errors import PARSE_ERRORS, FormatError, IntegrityError, parse_error
from .files import replacing

# fwimage.h: struct fwimage_trailer, big-endian
TRAILER = Struct(
    "magic" / Const(b"FWx0"),
    "crc32" / Int32ub,
    "type" / Int8ub,
    Padding(3),
    "size" / Int32ub,  # the payload's bytes + 16
)
# struct fwimage_header, before the metadata JSON: fwtool reads only version 0
HEADER = Struct("version" / Const(0, Int32ub), "flags" / Const(0, Int32ub))
SIGNATURE_TYPE, METADATA_TYPE = 0, 1
MAX_PAYLOAD = {METADATA_TYPE: 30 * 1024, SIGNATURE_TYPE: 1024}  # fwtool's METADATA_MAXLEN, SIGNATURE_MAXLEN


@dataclass(frozen=True)
class Sysupgrade:
    """A sysupgrade image read back: its metadata, signature, and what the signature covers."""

    path: Path
    metadata: dict[str, Any]
    signature: usign.UsignSignature | None
    signed: bytes  # the image up to the signature trailer (all of it when unsigned)
    members: list[str]

    @property
    def board(self) -> str:
        return str(self.metadata.get("version", {}).get("board", ""))


def build_metadata(*, board: str, compatible: tuple[str, ...], version: str, build_id: str, target: str) -> bytes:
    """The metadata JSON (metadata_version 1.1) as OpenWrt's image build writes it for fwtool -I."""
    data = {"metadata_version": "1.1", "compat_version": "1.0", "supported_devices": list(compatible),
            "version": {"dist": "fwgen", "version": version, "revision": build_id, "target": target,
                        "board": board}}
    return (json.dumps(data) + "\n").encode()


def write_sysupgrade(path: Path, *, board: str, kernel: Path, root: Path, metadata: bytes, mtime: int,
                     key: usign.UsignSecretKey | None = None) -> None:
    """The sysupgrade image at `path` (atomically), signed with `key` when one is given."""
    image = append_trailer(_tar(board, kernel.read_bytes(), root.read_bytes(), mtime),
                           METADATA_TYPE, HEADER.build({}) + metadata)
    if key is not None:
        image = append_trailer(image, SIGNATURE_TYPE, key.sign(image).encode())
    with replacing(path) as out:
        out.write(image)


def sign_sysupgrade(path: Path, key: usign.UsignSecretKey) -> Sysupgrade:
    """Sign the image at `path` (replacing its signature, if any) once its trailers check out."""
    image = read_sysupgrade(path)
    signed = append_trailer(image.signed, SIGNATURE_TYPE, key.sign(image.signed).encode())
    with replacing(path) as out:
        out.write(signed)
    return verify_sysupgrade(path, key.trusted())


def append_trailer(image: bytes, kind: int, payload: bytes) -> bytes:
    """`image` with `payload` and its trailer after it, as `fwtool -I`/`-S` append them."""
    crc = zlib.crc32(image + payload) ^ 0xFFFFFFFF  # fwtool's CRC has no final xor
    return image + payload + TRAILER.build({"crc32": crc, "type": kind, "size": len(payload) + TRAILER.sizeof()})


def is_sysupgrade(path: Path) -> bool:
    """Whether `path` ends in an fwtool trailer."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() < TRAILER.sizeof():
            return False
        f.seek(-TRAILER.sizeof(), 2)
        return f.read(4) == b"FWx0"


def read_sysupgrade(path: Path) -> Sysupgrade:
    """The trailers of the image at `path`, from the end as fwtool reads them (each CRC
    checked), and the names in its tar."""
    path = Path(path)
    data = path.read_bytes()
    trailers: dict[int, bytes] = {}
    end, signed_end = len(data), len(data)
    while end >= TRAILER.sizeof() and data[end - TRAILER.sizeof():end - TRAILER.sizeof() + 4] == b"FWx0":
        kind, payload, start = _read_trailer(data, end, path)
        if kind == SIGNATURE_TYPE and not trailers:
            signed_end = start
        trailers.setdefault(kind, payload)
        end = start
    if METADATA_TYPE not in trailers:
        raise FormatError(f"{path}: no fwtool metadata trailer (FWx0, type 1) at its end")
    header, raw = trailers[METADATA_TYPE][:HEADER.sizeof()], trailers[METADATA_TYPE][HEADER.sizeof():]
    try:
        HEADER.parse(header)
        metadata = json.loads(raw)
    except PARSE_ERRORS as e:
        raise parse_error(f"{path}: metadata trailer", "fwimage header", e) from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: metadata trailer: not JSON: {e}") from e
    devices = metadata.get("supported_devices") if isinstance(metadata, dict) else None
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices) \
            or not isinstance(metadata.get("version", {}), dict):
        raise FormatError(f"{path}: metadata trailer: no supported_devices list, or a version that is no object")
    signature = (usign.parse_signature(trailers[SIGNATURE_TYPE], f"{path}: signature trailer")
                 if SIGNATURE_TYPE in trailers else None)
    return Sysupgrade(path, metadata, signature, data[:signed_end], _members(data[:end], path))


def verify_sysupgrade(path: Path, keys: dict[str, usign.UsignKey] | None = None, *,
                      board: str | None = None) -> Sysupgrade:
    """Check the image as OpenWrt's sysupgrade would: the trailers' CRCs, the usign signature
    over everything before it (when `keys` are given: then one is required), `board` among
    supported_devices (when given) and a tar holding sysupgrade-<board>/CONTROL."""
    image = read_sysupgrade(path)
    if keys is not None:
        if image.signature is None:
            raise IntegrityError(f"{path}: not signed (no fwtool signature trailer)", "fwgen sign IMAGE --key KEY")
        usign.verify(image.signed, image.signature, keys, str(path))
    devices = image.metadata["supported_devices"]
    if board is not None and board not in devices:
        raise IntegrityError(f"{path}: an image for {', '.join(devices)}, not for board {board}")
    control = f"sysupgrade-{image.board}/CONTROL"
    if control not in image.members:
        raise FormatError(f"{path}: its tar holds no {control}")
    return image


def _read_trailer(data: bytes, end: int, path: Path) -> tuple[int, bytes, int]:
    """The trailer ending at `end`: its type, its payload, and where the payload starts."""
    at = end - TRAILER.sizeof()
    try:
        trailer = TRAILER.parse(data[at:end])
    except PARSE_ERRORS as e:
        raise parse_error(f"{path}: offset {at:#x}", "fwtool trailer", e) from e
    size = trailer.size - TRAILER.sizeof()
    if not 0 <= size <= min(at, MAX_PAYLOAD.get(trailer.type, MAX_PAYLOAD[METADATA_TYPE])):
        raise FormatError(f"{path}: offset {at:#x}: fwtool trailer of type {trailer.type} says {size} bytes")
    start = at - size
    if zlib.crc32(data[:at]) ^ 0xFFFFFFFF != trailer.crc32:
        raise IntegrityError(f"{path}: offset {at:#x}: fwtool trailer CRC does not match the image before it")
    return trailer.type, data[start:at], start


def _members(image: bytes, path: Path) -> list[str]:
    try:
        with tarfile.open(fileobj=io.BytesIO(image), mode="r:") as tar:
            return tar.getnames()
    except (tarfile.TarError, EOFError) as e:
        raise FormatError(f"{path}: not a sysupgrade tar before its trailers: {e}") from e


def _tar(board: str, kernel: bytes, root: bytes, mtime: int) -> bytes:
    """sysupgrade-<board>/ with CONTROL, kernel and root, in the order and with the owners
    OpenWrt's sysupgrade-tar.sh gives them (GNU tar, owner 0, SOURCE_DATE_EPOCH)."""
    folder = f"sysupgrade-{board}"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(tar_member(folder, 0, mtime, mode=0o755, kind=tarfile.DIRTYPE))
        for name, blob in (("CONTROL", f"BOARD={board}\n".encode()), ("kernel", kernel), ("root", root)):
            tar.addfile(tar_member(f"{folder}/{name}", len(blob), mtime), io.BytesIO(blob))
    return out.getvalue()

