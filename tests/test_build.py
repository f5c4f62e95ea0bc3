"""`fwgen build --board qemu-aarch64` end to end against the real Debian mirror."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from buildutil import REPO, run_fwgen

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def built(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("out")
    result = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(out), "--json", cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return out / "qemu-aarch64", json.loads(result.stdout)


def test_build_writes_kernel_initramfs_and_manifest(built):
    outdir, summary = built
    assert sorted(p.name for p in outdir.iterdir() if p.is_file()) == [
        "initramfs.cpio.gz", "kernel", "manifest.json", "sbom.cdx.json", "sbom.spdx.json"]
    manifest = json.loads((outdir / "manifest.json").read_text())
    for name, info in manifest["outputs"].items():
        data = (outdir / info["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"], name
        assert len(data) == info["size"]
    assert summary["outputs"] == manifest["outputs"]
    packages = {p["name"]: p for p in manifest["inputs"]["packages"]}
    assert "dropbear-bin" in packages and "busybox-static" not in packages
    assert packages["dropbear-bin"]["url"].startswith("http://deb.debian.org/debian/pool/")
    assert len(packages["dropbear-bin"]["sha256"]) == 64
    busybox = manifest["inputs"]["busybox"]
    assert busybox["libc"] == "musl" and busybox["version"] == "1.35.0"
    kernel = manifest["inputs"]["kernel"]
    assert kernel["name"].startswith("linux-image-6.") and kernel["name"].endswith("-cloud-arm64")
    assert kernel["release"] in kernel["name"]
    assert manifest["inputs"]["kernel_modules"][-1] == "virtio_net"
    assert len(manifest["board"]["sha256"]) == 64
    assert manifest["inputs"]["excluded_paths"]["/usr/lib/*/gconv/*"] > 50
    assert manifest["files"]["/init"] == "overlay:base"
    assert manifest["files"]["/bin/busybox"] == "busybox:1.35.0-musl"


def test_timestamps_default_to_the_newest_input_board_and_overlays_included(built):
    from fwgen.config import load_board
    from fwgen.epoch import board_input_files, newest_input_time

    manifest = json.loads((built[0] / "manifest.json").read_text())
    own = newest_input_time(board_input_files(load_board("qemu-aarch64")))
    assert own > 1_600_000_000  # never 1970, packages or not
    assert manifest["source_date_epoch"] >= own
    assert manifest["source_date_epoch_from"] in ("packages", "board and overlay files")
    if manifest["source_date_epoch"] == own:
        assert manifest["source_date_epoch_from"] == "board and overlay files"


def test_the_manifest_follows_its_documented_json_schema(built):
    import jsonschema

    schema = json.loads((REPO / "fwgen" / "schema" / "manifest.schema.json").read_text())
    manifest = json.loads((built[0] / "manifest.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(manifest)
    manifest["outputs"]["initramfs"]["sha256"] = "not a digest"
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.Draft202012Validator(schema).validate(manifest)


def test_gnu_cpio_lists_a_root_owned_initramfs_with_device_nodes(built):
    outdir, _ = built
    archive = subprocess.run(["gzip", "-dc", str(outdir / "initramfs.cpio.gz")], capture_output=True,
                             check=True).stdout
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=archive, capture_output=True,
                             check=True).stdout.decode()
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line
             for line in listing.splitlines()}
    assert lines["init"].startswith("-rwxr-xr-x")
    assert lines["bin/busybox"].startswith("-rwxr-xr-x")
    assert lines["dev/console"].startswith("crw-------") and " 5, " in lines["dev/console"]
    assert lines["dev/null"].startswith("crw-rw-rw-")
    assert "bin/sh" in lines and "-> " in lines["bin/sh"]
    assert all(" root " in line for line in listing.splitlines()), "every entry is root-owned"
    assert not [name for name in lines if "/gconv/" in name or name.startswith("usr/share/man/")]
    assert any(name.startswith("usr/share/doc/") and name.endswith("/copyright") for name in lines)
    modules = [name for name in lines if name.endswith(".ko")]
    assert any(name.endswith("/virtio_net.ko") for name in modules)


def test_rebuild_gives_a_byte_identical_initramfs(built, tmp_path, cache_dir):
    outdir, _ = built
    result = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(tmp_path), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    again = tmp_path / "qemu-aarch64"
    for name in ("initramfs.cpio.gz", "kernel", "manifest.json"):
        first, second = (outdir / name).read_bytes(), (again / name).read_bytes()
        if name == "manifest.json":  # the board path is the same; everything else must match too
            assert json.loads(first)["outputs"] == json.loads(second)["outputs"]
        else:
            assert first == second, f"{name} differs between two builds of the same inputs"


def test_squashfs_output_alone_is_written_and_cannot_be_booted(tmp_path, cache_dir):
    from fwgen.images.squashfs import read_squashfs

    text = (REPO / "boards" / "qemu-aarch64.yaml").read_text()
    board = tmp_path / "sqfs-only.yaml"
    board.write_text(text.replace("name: qemu-aarch64", "name: sqfs-only")
                     .replace("outputs: [initramfs]", "outputs: [squashfs]"))
    result = run_fwgen("build", "--board", str(board), "--out", str(tmp_path / "out"), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    outdir = tmp_path / "out" / "sqfs-only"
    manifest = json.loads((outdir / "manifest.json").read_text())
    assert sorted(manifest["outputs"]) == ["kernel", "squashfs"]
    image = outdir / manifest["outputs"]["squashfs"]["file"]
    assert hashlib.sha256(image.read_bytes()).hexdigest() == manifest["outputs"]["squashfs"]["sha256"]
    listing = subprocess.run(["unsquashfs", "-lls", str(image)], capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/bin/busybox" in listing and "squashfs-root/usr/sbin/dropbear" in listing
    root = read_squashfs(image)
    assert set(manifest["files"]) == {entry.path for entry in root.to_rootfs()}
    booted = run_fwgen("boot", "--board", str(board), "--out", str(tmp_path / "out"), cache=cache_dir)
    assert booted.returncode == 2
    assert booted.stderr.strip().endswith(
        "sqfs-only.yaml: outputs squashfs: nothing QEMU can boot (add one of disk, flash, initramfs, sdcard to outputs)")
