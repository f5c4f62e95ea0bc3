"""The output table (fwgen/outputs.py) names every output a board file may ask for, once.

build.py and boot.py hold no output names: an output the schema accepts but the table
lacks would be silently not written, so the two lists are compared here.
"""

from __future__ import annotations

import json

from buildutil import REPO

from fwgen.build import _has_disk_root
from fwgen.config import load_board
from fwgen.outputs import BOOTABLE_OUTPUTS, OUTPUTS, outputs_of


def schema_outputs() -> set[str]:
    schema = json.loads((REPO / "fwgen" / "schema" / "board.schema.json").read_text())
    return set(schema["properties"]["outputs"]["items"]["enum"])


def test_every_output_the_schema_accepts_is_one_table_entry():
    names = [output.name for output in OUTPUTS]
    assert len(names) == len(set(names))
    # An implied output (the update bundle, from `update:`) is never listed in `outputs:`.
    assert {output.name for output in OUTPUTS if output.implied_by is None} == schema_outputs()
    assert {output.name for output in OUTPUTS if output.implied_by is not None} == {"bundle", "sysupgrade"}


def test_an_update_section_adds_the_bundle_to_the_boards_outputs(tmp_path):
    text = (REPO / "boards" / "qemu-aarch64-disk.yaml").read_text()
    board = tmp_path / "with-update.yaml"
    board.write_text(text.replace("name: qemu-aarch64-disk", "name: with-update") + "update:\n  slots: single\n")
    assert "bundle" not in [o.name for o in outputs_of(load_board("qemu-aarch64-disk"))]
    assert [o.name for o in outputs_of(load_board(str(board)))][-1] == "bundle"
    router = tmp_path / "router.yaml"
    router.write_text((REPO / "boards" / "qemu-mips-router.yaml").read_text().replace("name: qemu-mips-router",
                                                                                    "name: router") + "update: {}\n")
    assert [o.name for o in outputs_of(load_board(str(router)))][-2:] == ["bundle", "sysupgrade"]


def test_covered_outputs_are_table_entries_and_a_writerless_entry_is_always_covered():
    names = {output.name for output in OUTPUTS}
    for output in OUTPUTS:
        assert set(output.covers) <= names - {output.name}, output.name
        if output.write is None:
            assert any(output.name in other.covers for other in OUTPUTS), output.name


def test_a_squashfs_alone_cannot_boot_and_the_root_carriers_can():
    assert BOOTABLE_OUTPUTS == {"initramfs", "disk", "sdcard", "flash"}


def test_where_the_root_is_follows_the_boards_outputs():
    assert not _has_disk_root(load_board("qemu-aarch64"))
    disk = load_board("qemu-aarch64-disk")
    assert _has_disk_root(disk)
    assert [o.name for o in outputs_of(disk)] == [n for n in (o.name for o in OUTPUTS) if n in disk.outputs]
    assert [o.name for o in outputs_of(load_board("rpi-zero")) if o.boot_partition] == ["sdcard"]
