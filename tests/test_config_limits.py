"""Hostile board, overlay and profile files are refused quickly, in one line, with exit 2:
deep nesting, alias bombs (billion laughs) and oversize files, through the real CLI.

The timeout passed to run_fwgen is generous on purpose (a loaded CI machine); the point is
that each file is refused before any expensive work, where the old loader ran out of stack
(490 levels: a 2,990-line RecursionError), memory (1.2 GB from a 354-byte file) or time
(a 50 MB list: over 60 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildutil import run_fwgen

from fwgen.document import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES, read_yaml
from fwgen.errors import ConfigError


def deep_board(levels: int) -> str:
    return "arch: aarch64\ndescription: " + "[" * levels + "]" * levels + "\n"


def laughs_board(levels: int) -> str:
    """Each level a list of nine aliases of the level before: 9**(levels+1) strings."""
    lines = ["arch: aarch64", "l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def big_board(size: int) -> str:
    items, total = [], 0
    while total < size:
        item = f"  - package-{len(items)}\n"
        items.append(item)
        total += len(item)
    return "arch: aarch64\npackages:\n" + "".join(items)


def show(tmp_path: Path, text: str) -> tuple[Path, str, int]:
    board = tmp_path / "hostile.yaml"
    board.write_text(text)
    result = run_fwgen("show", str(board), cache=tmp_path / "cache", cwd=tmp_path, timeout=120)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    return board, result.stderr.strip(), result.returncode


def test_deep_nesting_is_one_line_with_its_line(tmp_path):
    _, message, code = show(tmp_path, deep_board(490))
    assert code == 2
    assert f"hostile.yaml:2:{14 + MAX_DEPTH - 1}: nested more than {MAX_DEPTH} levels deep" in message


def test_billion_laughs_is_refused_before_it_expands(tmp_path):
    _, message, code = show(tmp_path, laughs_board(9))
    assert code == 2
    assert "hostile.yaml:2:" in message and f"more than {MAX_VALUES} values once aliases are expanded" in message


def test_oversize_file_is_refused_unread(tmp_path):
    _, message, code = show(tmp_path, big_board(50 * 1024 * 1024))
    assert code == 2
    assert f"hostile.yaml: larger than {MAX_FILE_BYTES // 1024} KiB" in message


def test_anchors_nested_in_anchors_cannot_exceed_the_depth(tmp_path):
    """Each anchor one level deep, but aliases stack them: the expanded value is 400 deep."""
    lines = ["arch: aarch64", "a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 400)]
    path = tmp_path / "stacked.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} levels deep once aliases are expanded"):
        read_yaml(path)


def test_legitimate_aliases_and_sizes_still_load(tmp_path):
    path = tmp_path / "fine.yaml"
    path.write_text(laughs_board(3) + "packages:\n" + "".join(f"  - p{i}\n" for i in range(2000)))
    doc = read_yaml(path)
    assert len(doc.data["l3"]) == 9 and doc.data["l3"][8][8][8][8] == "lol"
    assert len(doc.data["packages"]) == 2000


def test_overlay_and_profile_files_have_the_same_limits(tmp_path):
    overlay = tmp_path / "overlays" / "bomb"
    overlay.mkdir(parents=True)
    (overlay / "overlay.yaml").write_text(laughs_board(9).replace("arch: aarch64\n", "description: x\n"))
    (tmp_path / "board.yaml").write_text("arch: aarch64\noverlays: [bomb]\n")
    result = run_fwgen("show", "board.yaml", cache=tmp_path / "cache", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "overlays/bomb/overlay.yaml:2:" in result.stderr and "once aliases are expanded" in result.stderr
    (tmp_path / "qemu").mkdir()
    (tmp_path / "qemu" / "deep.yaml").write_text(deep_board(300))
    (tmp_path / "board.yaml").write_text("arch: aarch64\nqemu: {profile: deep}\n")
    result = run_fwgen("show", "board.yaml", cache=tmp_path / "cache", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert f"qemu/deep.yaml:2:{14 + MAX_DEPTH - 1}: nested more than" in result.stderr
