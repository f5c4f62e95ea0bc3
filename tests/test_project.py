"""A vendor's project file (fwgen.toml, [tool.fwgen]) and FWGEN_PATH: folders found without flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fwgen.cache import Cache
from fwgen.cli import main
from fwgen.errors import ConfigError
from fwgen.project import active_projects, load_project

REPO = Path(__file__).resolve().parents[1]


def vendor_tree(root: Path) -> Path:
    """A vendor repository: a product board using the vendor's own overlay and QEMU profile."""
    (root / "products").mkdir(parents=True)
    (root / "layers" / "acme-web" / "files" / "etc").mkdir(parents=True)
    (root / "layers" / "acme-web" / "overlay.yaml").write_text("description: ACME web admin\n")
    (root / "layers" / "acme-web" / "files" / "etc" / "acme-release").write_text("acme 1\n")
    (root / "machines").mkdir()
    (root / "machines" / "acme-virt.yaml").write_text((REPO / "qemu" / "virt-aarch64.yaml").read_text())
    board = (REPO / "boards" / "qemu-aarch64.yaml").read_text()
    board = board.replace("overlays: [", "overlays: [acme-web, ").replace("profile: virt-aarch64", "profile: acme-virt")
    assert "acme-web" in board and "acme-virt" in board
    (root / "products" / "acme-router.yaml").write_text(board.replace("name: qemu-aarch64", "name: acme-router"))
    return root


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_fwgen_toml_names_the_folders_so_commands_need_no_flags(tmp_path, monkeypatch):
    root = vendor_tree(tmp_path / "acme")
    (root / "fwgen.toml").write_text('boards = ["products"]\noverlays = ["layers"]\nqemu = "machines"\nout = "build"\n')
    (root / "src").mkdir()
    monkeypatch.chdir(root / "src")  # found from a subfolder, as git finds .git
    monkeypatch.delenv("FWGEN_PATH", raising=False)
    listed = invoke("boards", "--json")
    assert listed.exit_code == 0, listed.output
    assert "acme-router" in {board["name"] for board in json.loads(listed.output)}
    shown = invoke("show", "acme-router", "--json")
    assert shown.exit_code == 0, shown.output
    resolved = json.loads(shown.output)
    assert Path(resolved["overlays"][0]["path"]) == root / "layers" / "acme-web"
    assert "acme-virt" in shown.output
    [project] = active_projects()
    assert project.out == root / "build"


def test_pyproject_tool_fwgen_table_and_fwgen_path_trees(tmp_path, monkeypatch):
    root = vendor_tree(tmp_path / "acme")
    (root / "pyproject.toml").write_text('[project]\nname = "acme"\n\n[tool.fwgen]\nboards = ["products"]\n'
                                         'overlays = ["layers"]\nqemu = ["machines"]\n')
    monkeypatch.chdir(root)
    monkeypatch.delenv("FWGEN_PATH", raising=False)
    assert invoke("show", "acme-router").exit_code == 0
    # The same tree shaped like fwgen's own, named by FWGEN_PATH from anywhere.
    tree = tmp_path / "tree"
    tree.mkdir()
    for kind, source in (("boards", "products"), ("overlays", "layers"), ("qemu", "machines")):
        (root / source).rename(tree / kind)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert invoke("show", "acme-router").exit_code == 2
    monkeypatch.setenv("FWGEN_PATH", str(tree))
    result = invoke("show", "acme-router")
    assert result.exit_code == 0, result.output


def test_a_broken_project_file_is_one_line_with_its_position_and_exit_2(tmp_path, monkeypatch):
    (tmp_path / "fwgen.toml").write_text('boards = ["boards"]\nout = \n')
    monkeypatch.chdir(tmp_path)
    result = invoke("boards")
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line
    assert line.startswith("fwgen: error: fwgen.toml:2:7: ")


@pytest.mark.parametrize("text, message", [
    ('bords = ["b"]\n', "bords: unknown key"),
    ('boards = ["missing"]\n', "boards: folder 'missing' not found"),
    ("boards = 3\n", "boards: expected a folder or a list of folders"),
    ('[cache]\nremote = "http://x"\n', "cache.remote: 'http://x' is not an oci://HOST/REPO address"),
    ('[cache]\nsize = 3\n', "cache.size: unknown key"),
])
def test_project_file_mistakes_name_the_key(tmp_path, text, message):
    (tmp_path / "fwgen.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_project(tmp_path / "fwgen.toml")


def test_cache_folder_from_the_project_unless_fwgen_cache_says_otherwise(tmp_path, monkeypatch):
    (tmp_path / "fwgen.toml").write_text('[cache]\ndir = "cache"\nremote = "oci://127.0.0.1:5000/fwgen"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FWGEN_CACHE", raising=False)
    assert Cache.default().root == tmp_path / "cache"
    assert active_projects()[0].remote_cache == "oci://127.0.0.1:5000/fwgen"
    monkeypatch.setenv("FWGEN_CACHE", str(tmp_path / "env-cache"))
    assert Cache.default().root == tmp_path / "env-cache"
