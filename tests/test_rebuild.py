"""Fast checks of the stale-build test `fwgen boot` runs (fwgen/rebuild.stale_files): an edit of
a board's checks alone (which `fwgen boot` reads from the board, and which change no byte of
the image) leaves its build current; any other edit does not. The boot that refuses a stale
build is in tests/test_boot.py."""

from __future__ import annotations

import json

from buildutil import REPO

from fwgen.config import load_board
from fwgen.rebuild import RECORD, files_digest, image_files_digest, stale_files


def record(outdir, board, *, image_files: bool = True) -> None:
    """The record a build of `board` writes (its file digests; the rest does not matter here)."""
    inputs = {"files": files_digest(board), **({"image_files": image_files_digest(board)} if image_files else {})}
    (outdir / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (outdir / RECORD).write_text(json.dumps({"inputs": inputs}))


def test_a_checks_only_edit_keeps_the_build_current_and_any_other_edit_makes_it_stale(tmp_path):
    text = (REPO / "boards" / "qemu-aarch64.yaml").read_text()
    board_file = tmp_path / "qemu-aarch64.yaml"
    board_file.write_text(text)
    outdir = tmp_path / "out"
    record(outdir, load_board(board_file))
    assert not stale_files(outdir, load_board(board_file))

    assert "    expect: aarch64\n" in text
    board_file.write_text(text.replace("    expect: aarch64\n", "    expect: aarch64\n  - run: \"true\"\n"
                                       "  - run: cat /etc/hostname\n    expect: fwgen-aarch64\n", 1)
                          + "# and a comment\n")
    edited = load_board(board_file)
    assert len(edited.checks) == len(load_board(REPO / "boards" / "qemu-aarch64.yaml").checks) + 2
    assert not stale_files(outdir, edited), "checks are read from the board at boot"
    assert files_digest(edited) != json.loads((outdir / RECORD).read_text())["inputs"]["files"], \
        "the build's own up-to-date check still sees the edit (the manifest records the board file's hash)"

    board_file.write_text(text.replace("hostname: ", "hostname: x", 1))
    assert stale_files(outdir, load_board(board_file)), "the hostname is in the image"


def test_a_record_without_the_image_digest_compares_every_byte(tmp_path):
    board_file = tmp_path / "qemu-aarch64.yaml"
    text = (REPO / "boards" / "qemu-aarch64.yaml").read_text()
    board_file.write_text(text)
    record(tmp_path, load_board(board_file), image_files=False)
    assert not stale_files(tmp_path, load_board(board_file))
    board_file.write_text(text + "# edited\n")
    assert stale_files(tmp_path, load_board(board_file))
