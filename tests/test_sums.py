"""Signed SHA256SUMS of a build folder (`fwgen sign out/<board> --key K`, `fwgen build --sign K`),
checked with OpenBSD's signify (Debian's signify-openbsd) and coreutils' sha256sum, which
share no code with fwgen."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from buildutil import run_fwgen

from fwgen.errors import FormatError, IntegrityError
from fwgen.sums import SIGNATURE_FILE, SUMS_FILE, verify_signed_sums
from fwgen.usign import load_keys, write_key_pair

SIGNIFY = shutil.which("signify-openbsd") or shutil.which("signify")
needs_signify = pytest.mark.skipif(SIGNIFY is None, reason="signify-openbsd is not installed (.ci/setup installs it)")


def signify_check(folder: Path, public: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SIGNIFY, "-C", "-p", str(public), "-x", SIGNATURE_FILE], cwd=folder,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture()
def build_folder(tmp_path) -> Path:
    folder = tmp_path / "out" / "board"
    (folder / "boot").mkdir(parents=True)  # a booted device's state: not part of the release
    (folder / "boot" / "disk.img").write_bytes(b"state")
    (folder / "kernel").write_bytes(b"\x7fELF kernel" * 100)
    (folder / "manifest.json").write_text('{"board": {"name": "board"}}\n')
    (folder / "sbom.spdx.json").write_text('{"spdxVersion": "SPDX-2.3"}\n')
    return folder


@needs_signify
def test_signed_sums_verify_with_signify_and_sha256sum(build_folder, tmp_path):
    secret, public = write_key_pair(tmp_path / "release")
    result = run_fwgen("sign", str(build_folder), "--key", str(secret), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    sums = (build_folder / SUMS_FILE).read_text()
    assert [line.split(" (")[1].split(")")[0] for line in sums.splitlines()] == [
        "kernel", "manifest.json", "sbom.spdx.json"]
    checked = signify_check(build_folder, public)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == ["Signature Verified", "kernel: OK", "manifest.json: OK", "sbom.spdx.json: OK"]
    coreutils = subprocess.run(["sha256sum", "-c", SUMS_FILE], cwd=build_folder, capture_output=True, text=True)
    assert coreutils.returncode == 0, coreutils.stderr
    assert verify_signed_sums(build_folder, load_keys([public])) == ["kernel", "manifest.json", "sbom.spdx.json"]


@needs_signify
def test_a_changed_file_or_another_key_fails_the_check(build_folder, tmp_path):
    secret, public = write_key_pair(tmp_path / "release")
    _, other = write_key_pair(tmp_path / "other")
    assert run_fwgen("sign", str(build_folder), "--key", str(secret), cache=tmp_path / "cache").returncode == 0
    assert signify_check(build_folder, other).returncode != 0
    with pytest.raises(IntegrityError, match="not trusted"):
        verify_signed_sums(build_folder, load_keys([other]))
    (build_folder / "kernel").write_bytes(b"tampered")
    checked = signify_check(build_folder, public)
    assert checked.returncode != 0 and "kernel" in checked.stdout + checked.stderr
    with pytest.raises(FormatError, match=r"kernel: SHA-256 differs from SHA256SUMS's"):
        verify_signed_sums(build_folder, load_keys([public]))


def test_sign_refuses_a_file_that_is_neither_bundle_nor_folder(build_folder, tmp_path):
    secret, _ = write_key_pair(tmp_path / "release")
    result = run_fwgen("sign", str(build_folder / "kernel"), "--key", str(secret), cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "kernel: not an update bundle, a sysupgrade image or a build folder" in result.stderr
