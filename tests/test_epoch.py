"""The default SOURCE_DATE_EPOCH: the newest input, with git's commit times for files in git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fwgen.config import load_board
from fwgen.epoch import board_input_files, newest_input_time

COMMITTED = 1_650_000_000


def git(repo: Path, *args: str, when: int = COMMITTED) -> None:
    stamp = f"@{when} +0000"
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_DATE=stamp, GIT_COMMITTER_DATE=stamp, GIT_AUTHOR_NAME="t",
                            GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
                            GIT_COMMITTER_EMAIL="t@example.org"))


@pytest.fixture
def vendor_repo(tmp_path) -> Path:
    """A vendor's git repository: a board without packages and its overlay, committed."""
    repo = tmp_path / "acme"
    (repo / "overlays" / "acme-web" / "files" / "etc").mkdir(parents=True)
    (repo / "overlays" / "acme-web" / "overlay.yaml").write_text("description: web\n")
    (repo / "overlays" / "acme-web" / "files" / "etc" / "acme.conf").write_text("port=80\n")
    (repo / "boards").mkdir()
    (repo / "boards" / "acme.yaml").write_text("arch: aarch64\noverlays: [acme-web]\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    for path in repo.rglob("*"):  # a fresh clone: every mtime is the moment of cloning
        os.utime(path, (2_000_000_000, 2_000_000_000), follow_symlinks=False)
    return repo


def test_committed_files_count_with_their_commit_time_not_their_mtime(vendor_repo):
    board = load_board(vendor_repo / "boards" / "acme.yaml")
    files = board_input_files(board)
    assert vendor_repo / "overlays" / "acme-web" / "files" / "etc" / "acme.conf" in files
    assert newest_input_time(files) == COMMITTED
    (vendor_repo / "boards" / "acme.yaml").write_text("arch: aarch64\noverlays: [acme-web]\nhostname: acme\n")
    git(vendor_repo, "commit", "-q", "-am", "hostname", when=COMMITTED + 100)
    assert newest_input_time(board_input_files(load_board(vendor_repo / "boards" / "acme.yaml"))) == COMMITTED + 100


def test_uncommitted_and_untracked_files_count_with_their_mtime(vendor_repo):
    conf = vendor_repo / "overlays" / "acme-web" / "files" / "etc" / "acme.conf"
    conf.write_text("port=8080\n")
    os.utime(conf, (1_700_000_123, 1_700_000_123))
    board = load_board(vendor_repo / "boards" / "acme.yaml")
    assert newest_input_time(board_input_files(board)) == 1_700_000_123
    git(vendor_repo, "checkout", "--", str(conf))
    extra = vendor_repo / "overlays" / "acme-web" / "files" / "etc" / "new.conf"
    extra.write_text("x\n")
    os.utime(extra, (1_700_000_456, 1_700_000_456))
    assert newest_input_time(board_input_files(board)) == 1_700_000_456


def test_files_outside_git_count_with_their_mtime(tmp_path):
    board_file = tmp_path / "plain.yaml"
    board_file.write_text("arch: aarch64\noverlays: []\n")
    os.utime(board_file, (1_600_000_000, 1_600_000_000))
    assert newest_input_time(board_input_files(load_board(board_file))) == 1_600_000_000
