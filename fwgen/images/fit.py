"""U-Boot's Flattened Image Tree (FIT, `.itb`): a device tree holding the images to boot.

The layout is U-Boot's `doc/usage/fit/source_file_format.rst`:

    / { timestamp; description; #address-cells;
        images { kernel-1 { data; type; arch; os; compression; load; entry;
                            hash-1 { algo = "sha256"; value; }; }; ramdisk-1 {...}; fdt-1 {...}; };
        configurations { default = "conf-1"; conf-1 { kernel; ramdisk; fdt; }; }; };

A hash node's `value` is the digest of the image's `data` as stored (compressed). `load` and
`entry` are one cell or two (U-Boot reads either, by the property's length). The tree is
written with fwgen's own FDT code (dtb.py), so a FIT is byte-identical for the same inputs;
its timestamp is the build's SOURCE_DATE_EPOCH.

Images may also keep their data outside the tree (`mkimage -E`): `data-offset` counts from the
end of the tree rounded up to 4 bytes, `data-position` from the start of the file. fwgen writes
data inside the tree and reads both.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..dtb import FDT_MAGIC, DeviceTree, Node
from ..errors import FormatError, UserError
from .uimage import ARCH, COMP, OS, TYPE

HASH_ALGOS = {
    "sha1": lambda d: hashlib.sha1(d).digest(),
    "sha256": lambda d: hashlib.sha256(d).digest(),
    "sha384": lambda d: hashlib.sha384(d).digest(),
    "sha512": lambda d: hashlib.sha512(d).digest(),
    "md5": lambda d: hashlib.md5(d).digest(),
    "crc32": lambda d: zlib.crc32(d).to_bytes(4, "big"),
}


@dataclass(frozen=True)
class FitImage:
    """One image of a FIT: `data` is stored as `compression` says (already compressed)."""

    name: str  # the node name, e.g. "kernel-1"
    type: str  # kernel, ramdisk, flat_dt ... (U-Boot's short type names)
    data: bytes
    arch: str
    os: str = "linux"
    compression: str = "none"
    load: int | None = None
    entry: int | None = None
    description: str = ""


@dataclass(frozen=True)
class FitConfig:
    """One configuration: which images `bootm ADDR#name` boots together."""

    name: str
    kernel: str
    ramdisk: str | None = None
    fdt: str | None = None
    description: str = ""


def make_fit(images: Sequence[FitImage], configs: Sequence[FitConfig], *, description: str,
             timestamp: int, default: str | None = None, hash_algo: str = "sha256") -> bytes:
    """The FIT as bytes. `default` names the default configuration (the first when None)."""
    _check_names(images, configs, default, hash_algo)
    root = Node("")
    root.set_cells("timestamp", [timestamp])
    root.set_strings("description", [description])
    root.set_cells("#address-cells", [2 if _needs_64_bits(images) else 1])
    root.children.append(Node("images", children=[_image_node(i, hash_algo) for i in images]))
    configurations = Node("configurations")
    configurations.set_strings("default", [default or configs[0].name])
    configurations.children.extend(_config_node(c) for c in configs)
    root.children.append(configurations)
    return DeviceTree(root).to_bytes()


def _check_names(images: Sequence[FitImage], configs: Sequence[FitConfig], default: str | None,
                 hash_algo: str) -> None:
    if hash_algo not in HASH_ALGOS:
        raise UserError(f"FIT hash algorithm {hash_algo!r} is not one of: {', '.join(HASH_ALGOS)}")
    if not configs:
        raise UserError("a FIT needs at least one configuration")
    names = {i.name for i in images}
    for image in images:
        for table, value, what in ((TYPE, image.type, "type"), (ARCH, image.arch, "arch"),
                                   (OS, image.os, "os"), (COMP, image.compression, "compression")):
            if value not in table:
                raise UserError(f"FIT image {image.name}: {what} {value!r} is not one of: {', '.join(sorted(table))}")
    for config in configs:
        for ref in (config.kernel, config.ramdisk, config.fdt):
            if ref is not None and ref not in names:
                raise UserError(f"FIT configuration {config.name} names image {ref!r}, which the FIT has not")
    if default is not None and default not in {c.name for c in configs}:
        raise UserError(f"FIT default configuration {default!r} is not one of the configurations")


def _needs_64_bits(images: Sequence[FitImage]) -> bool:
    return any(a is not None and a >= 1 << 32 for i in images for a in (i.load, i.entry))


def _image_node(image: FitImage, hash_algo: str) -> Node:
    node = Node(image.name)
    node.set_strings("description", [image.description or image.name])
    node.properties["data"] = image.data
    node.set_strings("type", [image.type])
    node.set_strings("arch", [image.arch])
    node.set_strings("os", [image.os])
    node.set_strings("compression", [image.compression])
    for prop, value in (("load", image.load), ("entry", image.entry)):
        if value is not None:
            node.set_integer(prop, value)
    digest = Node("hash-1")
    digest.set_strings("algo", [hash_algo])
    digest.properties["value"] = HASH_ALGOS[hash_algo](image.data)
    node.children.append(digest)
    return node


def _config_node(config: FitConfig) -> Node:
    node = Node(config.name)
    node.set_strings("description", [config.description or config.name])
    for prop, ref in (("kernel", config.kernel), ("ramdisk", config.ramdisk), ("fdt", config.fdt)):
        if ref is not None:
            node.set_strings(prop, [ref])
    return node


# --- reading ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FitHash:
    algo: str
    value: bytes
    ok: bool | None  # None: an algorithm fwgen cannot compute


@dataclass(frozen=True)
class ReadImage:
    name: str
    description: str
    type: str
    arch: str
    os: str
    compression: str
    load: int | None
    entry: int | None
    data: bytes
    hashes: tuple[FitHash, ...]

    def describe(self) -> dict:
        return {"name": self.name, "description": self.description, "type": self.type,
                "arch": self.arch, "os": self.os, "compression": self.compression,
                "load": self.load, "entry": self.entry, "size": len(self.data),
                "hashes": [{"algo": h.algo, "value": h.value.hex(), "ok": h.ok} for h in self.hashes]}


@dataclass(frozen=True)
class Fit:
    description: str
    timestamp: int | None
    images: tuple[ReadImage, ...]
    configurations: dict[str, dict[str, str]] = field(default_factory=dict)
    default: str | None = None

    def image(self, name: str) -> ReadImage:
        found = next((i for i in self.images if i.name == name), None)
        if found is None:
            raise UserError(f"the FIT has no image {name!r} (it has {', '.join(i.name for i in self.images)})")
        return found

    def describe(self) -> dict:
        return {"description": self.description, "timestamp": self.timestamp,
                "images": [i.describe() for i in self.images], "default": self.default,
                "configurations": self.configurations}


def is_fdt(head: bytes) -> bool:
    """The file starts as a flattened device tree does (a FIT is one)."""
    return head[:4] == FDT_MAGIC.to_bytes(4, "big")


def read_fit(data: bytes, *, where: str = "FIT") -> Fit:
    """Read a FIT: every image with its data and whether each hash matches."""
    tree = DeviceTree.parse(data, where=where)
    images_node = tree.root.child("images")
    if images_node is None:
        raise FormatError(f"{where}: a device tree without /images, not a FIT")
    images = tuple(_read_image(node, data, where) for node in images_node.children)
    configs_node = tree.root.child("configurations") or Node("configurations")
    configs = {c.name: {k: c.text(k) or "" for k in c.properties if k != "description"}
               for c in configs_node.children}
    timestamp = tree.root.integer("timestamp") if "timestamp" in tree.root.properties else None
    return Fit(tree.root.text("description", "") or "", timestamp, images, configs,
               configs_node.text("default"))


def read_fit_file(path: Path) -> Fit:
    return read_fit(Path(path).read_bytes(), where=str(path))


def _read_image(node: Node, blob: bytes, where: str) -> ReadImage:
    here = f"{where}: /images/{node.name}"
    payload = _image_data(node, blob, here)
    hashes = []
    for child in node.children:
        if child.name.startswith("hash"):
            algo = child.text("algo", "") or ""
            value = child.properties.get("value", b"")
            compute = HASH_ALGOS.get(algo)
            hashes.append(FitHash(algo, value, compute(payload) == value if compute else None))
    try:
        address = {p: node.integer(p) if p in node.properties else None for p in ("load", "entry")}
    except FormatError as e:
        raise FormatError(f"{here}: {e}") from e
    return ReadImage(node.name, node.text("description", "") or "", node.text("type", "") or "",
                     node.text("arch", "") or "", node.text("os", "") or "",
                     node.text("compression", "none") or "none", address["load"], address["entry"],
                     payload, tuple(hashes))


def _image_data(node: Node, blob: bytes, here: str) -> bytes:
    if "data" in node.properties:
        return node.properties["data"]
    if "data-size" not in node.properties:
        raise FormatError(f"{here}: no data, data-offset or data-position property")
    size = node.integer("data-size")
    if "data-position" in node.properties:
        start = node.integer("data-position")
    elif "data-offset" in node.properties:
        totalsize = int.from_bytes(blob[4:8], "big")
        start = ((totalsize + 3) & ~3) + node.integer("data-offset")
    else:
        raise FormatError(f"{here}: data-size without data-offset or data-position")
    if start + size > len(blob):
        raise FormatError(f"{here}: external data {start:#x}+{size:,} runs past the {len(blob):,}-byte file")
    return blob[start : start + size]
