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
    # No Debian userland: BusyBox and dropbear are compiled static musl (dropbear from the
    # pristine tarball in Debian's pool, by the ssh overlay's builds:).
    assert packages == {}
    [dropbear] = manifest["inputs"]["builds"]
    assert dropbear["build"] == "ssh/dropbear" and list(dropbear["files"]) == ["/usr/sbin/dropbearmulti"]
    assert manifest["files"]["/usr/sbin/dropbearmulti"] == "build:ssh/dropbear"
    busybox = manifest["inputs"]["busybox"]
    assert busybox["libc"] == "musl" and busybox["version"] == "1.35.0"
    kernel = manifest["inputs"]["kernel"]
    assert kernel["name"].startswith("linux-image-6.") and kernel["name"].endswith("-cloud-arm64")
    assert kernel["release"] in kernel["name"]
    assert manifest["inputs"]["kernel_modules"][-1] == "virtio_net"
    assert len(manifest["board"]["sha256"]) == 64
    assert manifest["inputs"]["excluded_paths"] == {}  # nothing to prune without packages (tests/test_prune.py)
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
    assert lines["usr/sbin/dropbearmulti"].startswith("-rwxr-xr-x")  # compiled by the ssh overlay
    assert lines["usr/sbin/dropbear"].startswith("l") and lines["usr/sbin/dropbear"].endswith("-> dropbearmulti")
    modules = [name for name in lines if name.endswith(".ko")]
    assert any(name.endswith("/virtio_net.ko") for name in modules)


def test_rebuild_gives_a_byte_identical_initramfs(built, tmp_path, cache_dir):
    outdir, _ = built
    result = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(tmp_path), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    again = tmp_path / "qemu-aarch64"
    for name in ("initramfs.cpio.gz", "kernel", "manifest.json", "sbom.spdx.json", "sbom.cdx.json"):
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


# -- no-op rebuilds (fwgen/rebuild.py) -------------------------------------------------------


@pytest.fixture
def copied(built, tmp_path):
    """A copy of the module's build folder (out/ with its link), to change without harm."""
    import shutil

    outdir, _ = built
    shutil.copytree(outdir.parent, tmp_path / "out", symlinks=True)
    return tmp_path / "out" / "qemu-aarch64"


def digests_of(board_file, cache_dir, *, epoch=None, compression="gzip"):
    from fwgen.build import resolve_board
    from fwgen.cache import Cache
    from fwgen.config import load_board
    from fwgen.context import BuildContext
    from fwgen.overlay import plan_layers
    from fwgen.rebuild import input_digests

    board = load_board(str(board_file))
    ctx = BuildContext(board=board, outdir=REPO, cache=Cache(cache_dir))
    ctx.layers = plan_layers(board.overlays, board.values, board.arch)
    return input_digests(board, resolve_board(ctx), source_date_epoch=epoch, compression=compression)


def test_an_unchanged_board_is_up_to_date_and_not_rebuilt(copied, cache_dir):
    target = copied.readlink()
    result = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(copied.parent), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("qemu-aarch64 is up to date (")
    as_json = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(copied.parent), "--json", cache=cache_dir)
    summary = json.loads(as_json.stdout)
    assert summary["up_to_date"] is True and summary["result"] == "pass"
    assert summary["outputs"] == json.loads((copied / "manifest.json").read_text())["outputs"]
    assert copied.readlink() == target  # nothing published


def test_each_changed_input_is_named(copied, cache_dir, tmp_path):
    from fwgen.rebuild import changed_since

    board_file = REPO / "boards" / "qemu-aarch64.yaml"
    assert changed_since(copied, digests_of(board_file, cache_dir)) is None
    edited = tmp_path / "qemu-aarch64.yaml"
    text = board_file.read_text()
    edited.write_text(text + "# a comment changes the board file's bytes\n")
    # files: the bytes changed; image_files: the board file is another path (test_rebuild.py
    # has a comment alone leave image_files as it was)
    assert changed_since(copied, digests_of(edited, cache_dir)) == "changed: files, image_files"
    assert "packages: []" in text
    edited.write_text(text.replace("packages: []", "packages: [zlib1g]", 1))
    assert "packages" in changed_since(copied, digests_of(edited, cache_dir))
    assert changed_since(copied, digests_of(board_file, cache_dir, epoch=1)) == "changed: settings"
    assert changed_since(copied, digests_of(board_file, cache_dir, compression="xz")) == "changed: settings"
    # An overlay's file, through a board beside its own copy of the overlays.
    import shutil

    moved = tmp_path / "moved" / "qemu-aarch64.yaml"
    shutil.copytree(REPO / "overlays", moved.parent / "overlays")
    moved.write_text(text)
    before = digests_of(moved, cache_dir)
    meta = moved.parent / "overlays" / "base" / "overlay.yaml"
    meta.write_text(meta.read_text() + "\n# edited\n")
    after = digests_of(moved, cache_dir)
    assert {name for name in before if before[name] != after[name]} == {"files", "image_files"}


def test_a_missing_or_damaged_output_or_manifest_is_noticed(copied, cache_dir):
    from fwgen.rebuild import RECORD, changed_since

    inputs = digests_of(REPO / "boards" / "qemu-aarch64.yaml", cache_dir)
    kernel = copied / "kernel"
    data = kernel.read_bytes()
    kernel.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert changed_since(copied, inputs) == "output kernel (kernel) does not match its recorded SHA-256"
    kernel.unlink()
    assert changed_since(copied, inputs) == "output kernel (kernel) is missing"
    kernel.write_bytes(data)
    assert changed_since(copied, inputs) is None
    (copied / "sbom.cdx.json").unlink()  # a file beside the outputs
    assert changed_since(copied, inputs) == "sbom.cdx.json is missing"
    manifest = copied / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"arch"', '"arch" ', 1))
    assert changed_since(copied, inputs) == "manifest.json differs from the one built"
    (copied / RECORD).unlink()
    assert changed_since(copied, inputs) == "no earlier build"


def test_a_damaged_output_is_rebuilt_and_force_rebuilds(copied, cache_dir):
    initramfs = copied / "initramfs.cpio.gz"
    good = initramfs.read_bytes()
    initramfs.write_bytes(good[:100])
    result = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(copied.parent), cache=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "building qemu-aarch64: output initramfs (initramfs.cpio.gz) is 100 bytes" in result.stderr
    assert result.stdout.startswith("built qemu-aarch64 in ")
    assert (copied / "initramfs.cpio.gz").read_bytes() == good
    target = copied.readlink()
    forced = run_fwgen("build", "--board", "qemu-aarch64", "--out", str(copied.parent), "--force", cache=cache_dir)
    assert forced.returncode == 0, forced.stderr
    assert "building qemu-aarch64: --force" in forced.stderr and copied.readlink() != target
