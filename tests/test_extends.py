"""Board inheritance: `extends:` a parent board, mappings merged, lists replaced or appended (`key+:`),
every value keeping the file and line it was written at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fwgen.cli import main
from fwgen.config import board_digest, board_to_dict, load_board
from fwgen.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PARENT = REPO / "boards" / "qemu-aarch64.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CHILD = """\
extends: qemu-aarch64
description: ACME router
packages+: [jq]
kernel:
  cmdline: console=ttyAMA0 quiet
checks+:
  - run: cat /etc/hostname
    expect: fwgen-aarch64
"""


def test_a_child_board_is_its_parent_with_its_own_keys_applied(tmp_path):
    child = load_board(write(tmp_path / "acme-router.yaml", CHILD))
    parent = load_board("qemu-aarch64")
    assert child.name == "acme-router"  # the parent's name is not inherited
    assert child.inherits == (PARENT,)
    assert child.description == "ACME router"
    assert child.packages == (*parent.packages, "jq")
    assert child.kernel.cmdline == "console=ttyAMA0 quiet"
    assert child.kernel.modules == parent.kernel.modules  # mappings merge key by key
    assert child.overlays == parent.overlays
    assert [c.command for c in child.checks] == [*(c.command for c in parent.checks), "cat /etc/hostname"]


def test_the_merged_board_equals_the_same_board_written_out_flat(tmp_path):
    child = load_board(write(tmp_path / "acme-router.yaml", "extends: qemu-aarch64\noverlays: [base, httpd]\n"))
    flat_text = PARENT.read_text().replace("name: qemu-aarch64\n", "")
    flat_text = flat_text.replace("overlays: [base, network, httpd, ssh, ntp, watchdog]", "overlays: [base, httpd]")
    assert "overlays: [base, httpd]" in flat_text
    flat = load_board(write(tmp_path / "flat" / "acme-router.yaml", flat_text))
    ignore = {"source", "inherits"}
    merged, written = board_to_dict(child), board_to_dict(flat)
    # A feed remembers where it was written, for errors about it later: the parent, here.
    assert merged["feeds"][0].pop("where").startswith("boards/qemu-aarch64.yaml:8:")
    assert written["feeds"][0].pop("where").endswith("flat/acme-router.yaml:7:5")
    assert {k: v for k, v in merged.items() if k not in ignore} == {k: v for k, v in written.items() if k not in ignore}


def test_errors_point_at_the_file_and_line_that_wrote_the_value(tmp_path):
    parent = write(tmp_path / "vendor" / "base-router.yaml",
                   PARENT.read_text().replace("name: qemu-aarch64\n", "") + "  - run: 3\n")
    child = write(tmp_path / "products" / "sku1.yaml", "extends: ../vendor/base-router.yaml\nhostname: sku1\n")
    with pytest.raises(ConfigError) as raised:
        load_board(child)
    line = len(parent.read_text().splitlines())
    assert str(raised.value).startswith(f"{parent}:{line}:")  # the parent's mistake, at the parent's line
    write(child, "extends: qemu-aarch64\nchecks+:\n  - run: uname -m\n    expect: 7\n")
    with pytest.raises(ConfigError, match=r"sku1\.yaml:4:13: checks\[\d+\]\.expect: expected a string"):
        load_board(child)


def test_inherited_relative_paths_are_read_beside_the_parent(tmp_path):
    write(tmp_path / "vendor" / "keys" / "release.pub", "untrusted comment: release\nRWQAAAAAAAAAAA==\n")
    write(tmp_path / "vendor" / "family.yaml", "arch: aarch64\noutputs: [disk]\nupdate:\n  keys: [keys/release.pub]\n")
    child = load_board(write(tmp_path / "products" / "sku2.yaml", "extends: ../vendor/family.yaml\nversion: '3'\n"))
    assert child.update.keys == ((tmp_path / "vendor" / "keys" / "release.pub").resolve(),)
    assert child.update.compatible == ("sku2",)


def test_the_board_digest_covers_the_parent(tmp_path):
    parent = write(tmp_path / "family.yaml", "arch: aarch64\nhostname: one\n")
    child = write(tmp_path / "sku.yaml", "extends: family.yaml\n")
    before = board_digest(load_board(child))
    write(parent, "arch: aarch64\nhostname: two\n")
    assert board_digest(load_board(child)) != before


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "a circle through a.yaml"),
    ({"a.yaml": "extends: a.yaml\n"}, "a circle through a.yaml"),
    ({"a.yaml": "extends: qemu-aarch65\n"}, "unknown board 'qemu-aarch65' .*did you mean 'qemu-aarch64'"),
    ({"a.yaml": "extends: qemu-aarch64\npackages: [x]\npackages+: [y]\n"}, "a.yaml:3:1: both packages and packages\\+"),
    ({"a.yaml": "extends: qemu-aarch64\nhostname+: [x]\n"}, "hostname\\+ appends to a list, but the parent's hostname is a string"),
    ({"a.yaml": "extends: qemu-aarch64\npackages+: jq\n"}, "packages\\+ appends a list"),
    ({"a.yaml": "arch: aarch64\npackages+: [jq]\n"}, "packages\\+"),  # no parent: an unknown key
])
def test_inheritance_mistakes_are_one_line_errors(tmp_path, files, message):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=message):
        load_board(tmp_path / "a.yaml")


def test_show_origins_names_the_file_and_line_of_every_setting(tmp_path):
    child = write(tmp_path / "acme-router.yaml", CHILD)
    result = CliRunner().invoke(main, ["show", str(child), "--origins", "--json"])
    assert result.exit_code == 0, result.output
    origins = {row["key"]: row["origin"] for row in json.loads(result.output)}
    assert origins["kernel.cmdline"] == f"{child}:5"
    assert origins["kernel.package"].endswith("boards/qemu-aarch64.yaml:15")
    assert origins["packages[0]"] == f"{child}:3"
    assert origins["description"] == f"{child}:2"
