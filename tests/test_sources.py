"""`fwgen sources` for an aarch64 board against Debian's real mirror: the source packages of the
image's packages through the verified Sources index, BusyBox's pinned tarball and patches,
a checksummed index. Source packages above 3 MiB (gcc-12, glibc, the kernel's) are listed
as skipped, which keeps the download near 10 MiB."""

from __future__ import annotations

import json
import subprocess

import pytest
from buildutil import run_fwgen

from fwgen.busybox import DEFAULT_SOURCE
from fwgen.fetch.deb import parse_stanzas


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, cache_dir):
    """qemu-aarch64 (its userland is compiled now: only the kernel is a Debian package) with
    Debian's dropbear-bin added, so its glibc and libraries bring their sources too."""
    tmp = tmp_path_factory.mktemp("sources")
    board = tmp / "qemu-aarch64-src.yaml"
    board.write_text(json.dumps({
        "arch": "aarch64", "feeds": [{"name": "debian", "type": "deb", "url": "http://deb.debian.org/debian"}],
        "kernel": {"package": "linux-image-cloud-arm64"}, "packages": ["dropbear-bin"],
        "overlays": ["base"], "outputs": ["initramfs"]}))
    dest = tmp / "qemu-aarch64-src"
    result = run_fwgen("sources", str(board), "--dest", str(dest), "--max-size", "3", cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return dest, result.stdout


@pytest.mark.network
def test_every_package_has_its_source_or_a_reason(fetched):
    dest, stdout = fetched
    index = json.loads((dest / "sources.json").read_text())
    by_source = {r["source"]: r for r in index["packages"] if "source" in r}
    assert {"glibc", "gcc-12", "dropbear", "zlib", "libtomcrypt"} <= set(by_source)
    assert by_source["glibc"]["status"] == "skipped" and "more than --max-size 3 MiB" in by_source["glibc"]["reason"]
    assert [r["status"] for r in index["packages"] if r["package"] == "dropbear-bin"] == ["fetched"]
    assert all(r["status"] in ("fetched", "skipped", "not found") and (r["status"] == "fetched" or r["reason"])
               for r in index["packages"])
    assert "skipped   glibc" in stdout


@pytest.mark.network
def test_the_dsc_files_are_the_ones_its_hashes_name(fetched):
    dest, _ = fetched
    [folder] = (dest / "debian").glob("dropbear_*")
    [dsc] = folder.glob("*.dsc")
    # The .dsc is clearsigned by the uploader; its Checksums-Sha256 names the other files.
    fields = next(parse_stanzas(dsc.read_text().split("\n\n", 1)[1]))
    listed = {line.split()[2]: line.split()[0] for line in fields["Checksums-Sha256"].strip().splitlines()}
    sums = subprocess.run(["sha256sum", *listed], cwd=folder, capture_output=True, text=True, check=True).stdout
    assert {line.split()[1]: line.split()[0] for line in sums.splitlines()} == listed
    assert sorted(p.name for p in folder.iterdir()) == sorted([dsc.name, *listed])


@pytest.mark.network
def test_busybox_and_the_checksummed_index(fetched):
    dest, _ = fetched
    index = json.loads((dest / "sources.json").read_text())
    assert index["busybox"]["sha256"] == DEFAULT_SOURCE.sha256
    assert f"busybox/{DEFAULT_SOURCE.filename}" in index["busybox"]["files"]
    assert any(name.endswith(".patch") for name in index["busybox"]["files"])
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=dest, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = {line.split(" (")[1].split(")")[0] for line in (dest / "SHA256SUMS").read_text().splitlines()}
    assert listed == {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}


def test_a_folder_with_files_is_refused(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    result = run_fwgen("sources", "qemu-aarch64", "--dest", str(dest), cache=tmp_path / "cache")
    assert result.returncode == 2
    assert f"{dest}: exists and is not an empty folder" in result.stderr
    assert (dest / "keep").read_text() == "mine"
