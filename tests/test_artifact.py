"""`fwgen publish` and `fwgen pull` (fwgen/artifact.py) against a real registry: a build
folder goes up as one annotated artifact and comes back byte for byte; a blob the registry
serves tampered is refused and nothing is written."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from click.testing import CliRunner

from fwgen import __version__
from fwgen.cli import main
from fwgen.oci import Registry, parse_reference
from fwgen.publish import create_staging, publish

BOARD = "qemu-aarch64"


def run_fwgen(*args: str):
    """The CLI in this process (a subprocess costs seconds of imports on a loaded machine)."""
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def built(tmp_path):
    """out/qemu-aarch64 as a build leaves it (a published folder, a manifest.json describing
    its outputs), with random content so its blobs are this test's own."""
    outdir = tmp_path / "out" / BOARD
    staging = create_staging(outdir)
    files = {"kernel": os.urandom(30_000), "initramfs.cpio.gz": os.urandom(60_000),
             "sbom.spdx.json": b'{"spdxVersion": "SPDX-2.3"}', "initramfs.cpio.gz.sig": os.urandom(64)}
    for name, data in files.items():
        (staging.path / name).write_bytes(data)
    outputs = {"kernel": "kernel", "initramfs": "initramfs.cpio.gz"}
    manifest = {"fwgen": __version__, "board": {"name": BOARD}, "source_date_epoch": 1700000000,
                "outputs": {k: {"file": f, "sha256": hashlib.sha256(files[f]).hexdigest()} for k, f in outputs.items()}}
    (staging.path / "manifest.json").write_text(json.dumps(manifest))
    folder = publish(staging, outdir)
    (folder / "boot").mkdir()  # the emulated device's state: not part of the build
    return tmp_path / "out", {**files, "manifest.json": (folder / "manifest.json").read_bytes()}


def test_publish_then_pull_round_trip(registry, built, tmp_path):
    out, files = built
    address = registry.address("firmware") + ":round-trip"
    result = run_fwgen("publish", BOARD, address, "--out", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    published = json.loads(result.stdout)
    assert sorted(published["files"]) == sorted(files)

    reference = parse_reference(address, where="test", tagged=True)
    manifest = Registry(reference).manifest("round-trip")
    assert manifest["artifactType"] == "application/vnd.fwgen.firmware.v1"
    annotations = manifest["annotations"]
    assert annotations["org.fwgen.board"] == BOARD
    assert annotations["org.opencontainers.image.version"] == "0"  # the board's version
    assert annotations["org.fwgen.fwgen.version"] == __version__
    assert annotations["org.fwgen.build.id"] == hashlib.sha256(files["manifest.json"]).hexdigest()
    assert annotations["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    types = {layer["annotations"]["org.opencontainers.image.title"]: layer["mediaType"] for layer in manifest["layers"]}
    assert types == {"kernel": "application/vnd.fwgen.kernel",
                     "initramfs.cpio.gz": "application/vnd.fwgen.initramfs.cpio+gzip",
                     "sbom.spdx.json": "application/spdx+json",
                     "initramfs.cpio.gz.sig": "application/vnd.fwgen.signature",
                     "manifest.json": "application/vnd.fwgen.manifest.v1+json"}

    dest = tmp_path / "pulled"
    result = run_fwgen("pull", address, "--dest", str(dest))
    assert result.exit_code == 0, result.stderr
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == files


def test_a_tampered_blob_is_refused_and_nothing_written(registry, built, tmp_path):
    out, files = built
    address = registry.address("firmware") + ":tampered"
    assert run_fwgen("publish", BOARD, address, "--out", str(out)).exit_code == 0
    blob = registry.blob_path("sha256:" + hashlib.sha256(files["initramfs.cpio.gz"]).hexdigest())
    blob.write_bytes(files["initramfs.cpio.gz"][:-1] + b"\x00")

    dest = tmp_path / "pulled"
    result = run_fwgen("pull", address, "--dest", str(dest))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"fwgen: error: {address.rsplit(':', 1)[0]}:tampered: initramfs.cpio.gz: the registry served 60000 bytes")
    assert result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no dest, no leftovers


def test_an_address_without_a_tag_is_refused(registry, built):
    out, _ = built
    result = run_fwgen("publish", BOARD, registry.address("firmware"), "--out", str(out))
    assert result.exit_code == 2
    assert result.stderr == f"fwgen: error: publish: '{registry.address('firmware')}' names no tag (write oci://HOST/REPO:TAG)\n"


def test_publishing_without_a_build_is_one_line(registry, tmp_path):
    result = run_fwgen("publish", BOARD, registry.address("firmware") + ":x", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == f"fwgen: error: {tmp_path / BOARD}: no build of {BOARD} to publish (run: fwgen build {BOARD})\n"
