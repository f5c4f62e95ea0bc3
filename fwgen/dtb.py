"""Flattened device trees (DTB): read one into a tree of nodes, change properties, write it back.

The format is the Devicetree Specification v0.4, chapter 5 "Flattened Devicetree (DTB)
Format": a header, the memory reservation map, the structure block (a stream of big-endian
32-bit tokens) and the strings block (property names, NUL-terminated). fwgen writes version 17
(last compatible 16), as dtc does.

fwgen changes device trees only for emulation: QEMU's raspi0 lacks a block that Debian's
bcm2835 DTB describes, and the profile's `dtb_fixups` adjust a *copy* the boot uses; the
image keeps the DTB the real board needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from construct import Const, ConstructError, Int32ub, Struct

from .errors import FormatError, UserError, parse_error

__all__ = ["DeviceTree", "Node", "read_dtb", "apply_fixups", "Fixup"]

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9
VERSION, LAST_COMP_VERSION = 17, 16
# Real trees nest a handful of levels; a file (a FIT from outside) nesting deeper is refused
# before the recursive reader runs out of stack.
MAX_DEPTH = 64

# Devicetree Specification 5.2 "Header": every field a big-endian u32.
Header = Struct(
    "magic" / Const(FDT_MAGIC, Int32ub),
    "totalsize" / Int32ub,
    "off_dt_struct" / Int32ub,
    "off_dt_strings" / Int32ub,
    "off_mem_rsvmap" / Int32ub,
    "version" / Int32ub,
    "last_comp_version" / Int32ub,
    "boot_cpuid_phys" / Int32ub,
    "size_dt_strings" / Int32ub,
    "size_dt_struct" / Int32ub,
)
HEADER_SIZE = Header.sizeof()


@dataclass
class Node:
    """One node: its name (unit address included), properties in order, children in order."""

    name: str
    properties: dict[str, bytes] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)

    def child(self, name: str) -> Node | None:
        return next((c for c in self.children if c.name == name), None)

    def cells(self, prop: str) -> list[int]:
        """A property as big-endian 32-bit cells."""
        value = self.properties[prop]
        if len(value) % 4:
            raise FormatError(f"DTB property {self.name}/{prop} is {len(value)} bytes, not whole cells")
        return [int.from_bytes(value[i : i + 4], "big") for i in range(0, len(value), 4)]

    def strings(self, prop: str) -> list[str]:
        """A property as a list of NUL-terminated strings (a stringlist)."""
        value = self.properties[prop]
        return value.rstrip(b"\0").decode("utf-8", "replace").split("\0") if value else []

    def integer(self, prop: str) -> int:
        """A property of one or two cells as one number (a FIT's `load` is either)."""
        cells = self.cells(prop)
        if len(cells) not in (1, 2):
            raise FormatError(f"DTB property {self.name}/{prop} is {len(cells)} cells, not a 32- or 64-bit number")
        return int.from_bytes(self.properties[prop], "big")

    def text(self, prop: str, default: str | None = None) -> str | None:
        """A string property (its first string), or `default` when absent."""
        return self.strings(prop)[0] if self.properties.get(prop) else default

    def set_integer(self, prop: str, value: int) -> None:
        """One cell when the number fits 32 bits, else two (as a 64-bit address needs)."""
        self.set_cells(prop, [value] if value < 1 << 32 else [value >> 32, value & 0xFFFFFFFF])

    def set_cells(self, prop: str, cells: Iterable[int]) -> None:
        self.properties[prop] = b"".join(int(c).to_bytes(4, "big") for c in cells)

    def set_strings(self, prop: str, strings: Iterable[str]) -> None:
        self.properties[prop] = b"".join(s.encode("utf-8") + b"\0" for s in strings)


@dataclass
class DeviceTree:
    root: Node
    reservations: list[tuple[int, int]] = field(default_factory=list)  # (address, size)
    boot_cpuid_phys: int = 0

    def find(self, path: str) -> Node:
        """The node at an absolute path such as /soc/watchdog@7e100000."""
        node = self.root
        for part in [p for p in path.split("/") if p]:
            found = node.child(part)
            if found is None:
                raise UserError(f"device tree has no node {path} (no {part!r} under {node.name or '/'})")
            node = found
        return node

    def walk(self) -> Iterator[tuple[str, Node]]:
        """(path, node) for every node, parents first."""
        stack = [("/", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            for child in reversed(node.children):
                stack.append((f"{path.rstrip('/')}/{child.name}", child))

    @classmethod
    def parse(cls, data: bytes, *, where: str = "DTB") -> DeviceTree:
        """Read a flattened device tree (version 16 or later)."""
        try:
            header = Header.parse(data)
        except ConstructError as e:
            raise parse_error(f"{where}: header at 0x0", "not a flattened device tree", e) from e
        if header.totalsize > len(data):
            raise FormatError(f"{where}: header says {header.totalsize} bytes, the file has {len(data)}")
        if header.last_comp_version > VERSION:
            raise FormatError(f"{where}: version {header.version} needs a reader for {header.last_comp_version}")
        strings = data[header.off_dt_strings : header.off_dt_strings + header.size_dt_strings]
        reader = _StructReader(data, header.off_dt_struct, header.off_dt_struct + header.size_dt_struct,
                               strings, where)
        return cls(reader.read_tree(), _read_reservations(data, header.off_mem_rsvmap, where),
                   header.boot_cpuid_phys)

    def to_bytes(self) -> bytes:
        """The tree as a version 17 DTB: header, reservation map, structure, strings."""
        strings = _StringTable()
        structure = bytearray()
        _write_node(self.root, structure, strings)
        structure += FDT_END.to_bytes(4, "big")
        rsvmap = b"".join(a.to_bytes(8, "big") + s.to_bytes(8, "big") for a, s in self.reservations)
        rsvmap += bytes(16)  # the map ends with an all-zero entry
        off_rsvmap = HEADER_SIZE  # 40: already 8-byte aligned, as the map must be
        off_struct = off_rsvmap + len(rsvmap)
        off_strings = off_struct + len(structure)
        header = Header.build(dict(
            totalsize=off_strings + len(strings.data), off_dt_struct=off_struct,
            off_dt_strings=off_strings, off_mem_rsvmap=off_rsvmap, version=VERSION,
            last_comp_version=LAST_COMP_VERSION, boot_cpuid_phys=self.boot_cpuid_phys,
            size_dt_strings=len(strings.data), size_dt_struct=len(structure),
        ))
        return header + rsvmap + bytes(structure) + strings.data


def read_dtb(path: Path) -> DeviceTree:
    return DeviceTree.parse(Path(path).read_bytes(), where=str(path))


def _read_reservations(data: bytes, offset: int, where: str) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    while True:
        if offset + 16 > len(data):
            raise FormatError(f"{where}: memory reservation map at {offset:#x} runs past the end")
        address = int.from_bytes(data[offset : offset + 8], "big")
        size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        if address == 0 and size == 0:
            return found
        found.append((address, size))
        offset += 16


class _StructReader:
    """Walks the structure block's tokens (Devicetree Specification 5.4)."""

    def __init__(self, data: bytes, start: int, end: int, strings: bytes, where: str) -> None:
        self.data, self.at, self.end, self.strings, self.where = data, start, end, strings, where

    def _u32(self) -> int:
        if self.at + 4 > self.end:
            raise FormatError(f"{self.where}: structure block ends inside a token at {self.at:#x}")
        value = int.from_bytes(self.data[self.at : self.at + 4], "big")
        self.at += 4
        return value

    def _token(self) -> int:
        while (token := self._u32()) == FDT_NOP:
            pass
        return token

    def _cstring(self, data: bytes, start: int, what: str) -> str:
        nul = data.find(b"\0", start)
        if nul < 0:
            raise FormatError(f"{self.where}: {what} at {start:#x} has no terminating NUL")
        return data[start:nul].decode("utf-8", "replace")

    def read_tree(self) -> Node:
        at = self.at
        if self._token() != FDT_BEGIN_NODE:
            raise FormatError(f"{self.where}: structure block at {at:#x} does not start with FDT_BEGIN_NODE")
        root = self._read_node(0)
        if (token := self._token()) != FDT_END:
            raise FormatError(f"{self.where}: token {token} at {self.at - 4:#x} after the root node, expected FDT_END")
        return root

    def _read_node(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise FormatError(f"{self.where}: nodes nested over {MAX_DEPTH} deep at {self.at:#x}")
        name = self._cstring(self.data, self.at, "node name")
        self.at += (len(name.encode()) + 1 + 3) & ~3
        node = Node(name)
        while True:
            at = self.at
            token = self._token()
            if token == FDT_PROP:
                length, nameoff = self._u32(), self._u32()
                prop = self._cstring(self.strings, nameoff, "property name")
                node.properties[prop] = self.data[self.at : self.at + length]
                self.at += (length + 3) & ~3
            elif token == FDT_BEGIN_NODE:
                node.children.append(self._read_node(depth + 1))
            elif token == FDT_END_NODE:
                return node
            else:
                raise FormatError(f"{self.where}: unexpected token {token} at {at:#x} in node {name or '/'}")


class _StringTable:
    """The strings block: property names in order of first use. As dtc does, a name that is
    the tail of one already stored ("names" in "reg-names") points into that one."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.offsets: dict[str, int] = {}

    def offset(self, name: str) -> int:
        if name not in self.offsets:
            encoded = name.encode("utf-8") + b"\0"
            found = self.data.find(encoded)
            if found < 0:
                found = len(self.data)
                self.data += encoded
            self.offsets[name] = found
        return self.offsets[name]


def _write_node(node: Node, out: bytearray, strings: _StringTable) -> None:
    out += FDT_BEGIN_NODE.to_bytes(4, "big")
    name = node.name.encode("utf-8") + b"\0"
    out += name + bytes(-len(name) % 4)
    for prop, value in node.properties.items():
        out += FDT_PROP.to_bytes(4, "big") + len(value).to_bytes(4, "big")
        out += strings.offset(prop).to_bytes(4, "big")
        out += value + bytes(-len(value) % 4)
    for child in node.children:
        _write_node(child, out, strings)
    out += FDT_END_NODE.to_bytes(4, "big")


@dataclass(frozen=True)
class Fixup:
    """A change to one node: properties to set (ints become cells, strings a stringlist) and
    properties to delete. Declared in a QEMU profile's `dtb_fixups`."""

    node: str
    set: tuple[tuple[str, tuple[int | str, ...]], ...] = ()
    delete: tuple[str, ...] = ()


def apply_fixups(tree: DeviceTree, fixups: Sequence[Fixup]) -> None:
    """Apply `fixups` to `tree` in place."""
    for fixup in fixups:
        node = tree.find(fixup.node)
        for prop, values in fixup.set:
            if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                node.set_cells(prop, values)  # type: ignore[arg-type]
            elif all(isinstance(v, str) for v in values):
                node.set_strings(prop, values)  # type: ignore[arg-type]
            else:
                raise UserError(f"DTB fix-up {fixup.node}/{prop}: values must be all numbers or all strings")
        for prop in fixup.delete:
            if node.properties.pop(prop, None) is None:
                raise UserError(f"DTB fix-up {fixup.node}: no property {prop} to delete")
