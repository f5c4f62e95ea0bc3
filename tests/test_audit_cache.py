"""The ELF audit's readings kept in the cache: reused by content, never trusted when damaged."""

from __future__ import annotations

import json

import pytest

from fwgen import audit
from fwgen.arch import Arch
from fwgen.audit import INSPECT_VERSION, audit_rootfs
from fwgen.cache import Cache
from fwgen.rootfs import RootFS


def tiny_elf_rootfs() -> RootFS:
    """A rootfs holding a minimal but valid 64-bit little-endian AArch64 ELF header."""
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5], header[6] = 2, 1, 1  # ELFCLASS64, ELFDATA2LSB, EV_CURRENT
    header[16:18] = (2).to_bytes(2, "little")  # ET_EXEC
    header[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    header[20:24] = (1).to_bytes(4, "little")
    header[52:54] = (64).to_bytes(2, "little")  # e_ehsize
    rootfs = RootFS()
    rootfs.add_file("/bin/tool", bytes(header), 0o755)
    return rootfs


def test_readings_are_reused_and_damaged_ones_are_ignored(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    first = audit_rootfs(tiny_elf_rootfs(), Arch.AARCH64, cache=cache)
    stored = list((tmp_path / "derived").rglob(f"*.elf-audit.v{INSPECT_VERSION}.json"))
    assert len(stored) == 1
    assert [f.machine for f in first.files] == ["aarch64"]

    # A kept reading is used: the ELF file is not parsed again.
    monkeypatch.setattr(audit, "inspect_elf", lambda *a: pytest.fail("parsed a file whose reading is kept"))
    assert [f.machine for f in audit_rootfs(tiny_elf_rootfs(), Arch.AARCH64, cache=cache).files] == ["aarch64"]
    monkeypatch.undo()

    # A damaged, edited or mislabelled file is discarded and rewritten from the ELF file itself.
    good = stored[0].read_bytes()
    reading = json.loads(good.partition(b"\n")[2])
    for damage in (b"{not json", good.replace(b"aarch64", b"tampered"),
                   json.dumps(dict(reading, machine="tampered")).encode()):
        stored[0].write_bytes(damage)
        assert [f.machine for f in audit_rootfs(tiny_elf_rootfs(), Arch.AARCH64, cache=cache).files] == ["aarch64"]
        assert stored[0].read_bytes() == good
    Cache.store_checked(stored[0], json.dumps(dict(reading, sha256="0" * 64, machine="other")).encode())
    assert [f.machine for f in audit_rootfs(tiny_elf_rootfs(), Arch.AARCH64, cache=cache).files] == ["aarch64"]
    assert stored[0].read_bytes() == good


def test_audit_without_a_cache_writes_nothing(tmp_path):
    report = audit_rootfs(tiny_elf_rootfs(), Arch.ARMV7)
    assert any("machine aarch64" in e for e in report.errors)
    assert list(tmp_path.iterdir()) == []
