"""OpenWrt's sysupgrade form of a router's update (fwgen/sysupgrade.py).

The independent reader is OpenWrt's own fwtool (the ipk of the real openwrt-core-mvebu feed,
run under qemu-arm-static with that feed's musl libc and libgcc): it reads back the metadata
fwgen wrote, extracts the signature, and gives the bytes it covers, which signify-openbsd
verifies. fwgen reads metadata fwtool itself appended (the upstream sample metadata.json).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from buildutil import build_with_update, run_fwgen

from fwgen import usign
from fwgen.bundle import verify_bundle
from fwgen.errors import FormatError, IntegrityError
from fwgen.sysupgrade import build_metadata, read_sysupgrade, verify_sysupgrade, write_sysupgrade

MVEBU = "openwrt-core-mvebu"
IPKS = ("libc_1.2.4-4", "libgcc1_13.1.0-4", "fwtool_2019-11-12-8f7fe925-1")
QEMU_ARM = shutil.which("qemu-arm-static") or shutil.which("qemu-arm")
SIGNIFY = shutil.which("signify-openbsd") or shutil.which("signify")
BOARD = "qemu-mips-router"


@pytest.fixture(scope="module")
def fwtool(samples, tmp_path_factory):
    """Run OpenWrt's fwtool: its ipk, libc and libgcc unpacked into one root, under qemu-arm."""
    if QEMU_ARM is None:
        pytest.skip("qemu-arm-static not installed (.ci/setup installs qemu-user-static)")
    root = tmp_path_factory.mktemp("openwrt-root")
    for name in IPKS:
        with tarfile.open(samples / MVEBU / f"{name}_arm_cortex-a9_vfpv3-d16.ipk") as ipk:
            data = ipk.extractfile("./data.tar.gz").read()  # type: ignore[union-attr]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(root, filter="data")

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([QEMU_ARM, "-L", str(root), str(root / "usr/bin/fwtool"), *args],
                              capture_output=True, timeout=120, **kwargs)

    return run


@pytest.fixture()
def keys(tmp_path) -> tuple[Path, Path]:
    return usign.write_key_pair(tmp_path / "release")


def make_image(folder: Path, *, key: Path | None = None, board: str = "router-a", name: str = "sysupgrade.bin",
               devices: tuple[str, ...] = ("router-a", "vendor,router-a")) -> Path:
    kernel, root = folder / "uImage", folder / "root.squashfs"
    kernel.write_bytes(b"\x27\x05\x19\x56" + bytes(range(256)) * 30)
    root.write_bytes(b"hsqs" + bytes(9000))
    metadata = build_metadata(board=board, compatible=devices, version="3.1", build_id="1700000000", target="mipsel")
    path = folder / name
    write_sysupgrade(path, board=board, kernel=kernel, root=root, metadata=metadata, mtime=1700000000,
                     key=usign.load_secret_key(key) if key else None)
    return path


def signify_verifies(public: Path, data: bytes, signature: bytes, folder: Path) -> subprocess.CompletedProcess[str]:
    (folder / "signed.bin").write_bytes(data)
    (folder / "signed.bin.sig").write_bytes(signature)
    return subprocess.run([SIGNIFY, "-V", "-p", str(public), "-m", str(folder / "signed.bin")],
                          capture_output=True, text=True)


def test_fwtool_reads_back_the_metadata_fwgen_wrote(fwtool, keys, tmp_path):
    image = make_image(tmp_path, key=keys[0])
    result = fwtool("-i", str(tmp_path / "meta.json"), str(image))
    assert result.returncode == 0, result.stderr
    written = build_metadata(board="router-a", compatible=("router-a", "vendor,router-a"), version="3.1",
                             build_id="1700000000", target="mipsel")
    assert (tmp_path / "meta.json").read_bytes() == written
    metadata = json.loads(written)
    assert metadata["supported_devices"] == ["router-a", "vendor,router-a"] and metadata["version"]["board"] == "router-a"
    with tarfile.open(image) as tar:  # the tar before the trailers, as sysupgrade untars it
        assert tar.getnames() == ["sysupgrade-router-a", "sysupgrade-router-a/CONTROL",
                                  "sysupgrade-router-a/kernel", "sysupgrade-router-a/root"]
        assert tar.extractfile("sysupgrade-router-a/CONTROL").read() == b"BOARD=router-a\n"  # type: ignore[union-attr]
        assert tar.extractfile("sysupgrade-router-a/kernel").read() == (tmp_path / "uImage").read_bytes()  # type: ignore[union-attr]
        assert all(m.uid == m.gid == 0 and m.mtime == 1700000000 for m in tar.getmembers())


@pytest.mark.skipif(SIGNIFY is None, reason="signify-openbsd not installed (.ci/setup installs it)")
def test_the_signature_fwtool_extracts_verifies_with_signify_over_what_fwtool_says_it_covers(fwtool, keys, tmp_path):
    image = make_image(tmp_path, key=keys[0])
    assert fwtool("-s", str(tmp_path / "extracted.sig"), str(image)).returncode == 0
    covered = fwtool("-T", "-s", "/dev/null", str(image))  # OpenWrt 19.07's check pipes this into usign -V
    assert covered.returncode == 0 and covered.stdout == read_sysupgrade(image).signed
    checked = signify_verifies(keys[1], covered.stdout, (tmp_path / "extracted.sig").read_bytes(), tmp_path)
    assert checked.returncode == 0 and "Signature Verified" in checked.stdout, checked.stderr
    stranger, stranger_pub = usign.write_key_pair(tmp_path / "stranger")
    refused = signify_verifies(stranger_pub, covered.stdout, (tmp_path / "extracted.sig").read_bytes(), tmp_path)
    assert refused.returncode != 0


def test_fwgen_reads_metadata_fwtool_appended(fwtool, samples, tmp_path):
    """The upstream sample metadata.json, appended by OpenWrt's fwtool -I to a tar of ours."""
    image = make_image(tmp_path)
    plain = tmp_path / "plain.bin"
    with tarfile.open(image) as tar:
        end = tar.offset
    plain.write_bytes(image.read_bytes()[:end])
    appended = fwtool("-I", str(samples / "fwtool" / "metadata.json"), str(plain))
    assert appended.returncode == 0, appended.stderr
    read = read_sysupgrade(plain)
    assert read.metadata == json.loads((samples / "fwtool" / "metadata.json").read_bytes())
    assert read.signature is None and read.board == "tplink_archer-c7-v5"
    # and what fwtool appends is what fwgen appends, byte for byte
    assert plain.read_bytes() == image.read_bytes()[:end] + _payload_and_trailer(samples, image.read_bytes()[:end])


def _payload_and_trailer(samples: Path, image: bytes) -> bytes:
    from fwgen.sysupgrade import HEADER, METADATA_TYPE, append_trailer

    return append_trailer(image, METADATA_TYPE, HEADER.build({}) + (samples / "fwtool" / "metadata.json").read_bytes())[len(image):]


def test_sign_appends_a_signature_fwtool_finds(fwtool, keys, tmp_path):
    image = make_image(tmp_path)
    assert verify_sysupgrade(image).signature is None
    result = run_fwgen("sign", str(image), "--key", str(keys[0]), cache=Path("/nonexistent-cache"), timeout=120)
    assert result.returncode == 0 and "signature verified" in result.stdout, result.stderr
    assert image.read_bytes() == make_image(tmp_path, key=keys[0], name="signed-at-build.bin").read_bytes()
    assert fwtool("-s", str(tmp_path / "sig"), str(image)).returncode == 0
    assert usign.parse_signature((tmp_path / "sig").read_bytes()).key_id == usign.load_secret_key(keys[0]).key_id


def test_the_same_inputs_give_the_same_image(keys, tmp_path):
    assert make_image(tmp_path, key=keys[0], name="a.bin").read_bytes() == \
        make_image(tmp_path, key=keys[0], name="b.bin").read_bytes()


@pytest.mark.parametrize("damage, error, words", [
    ("tar", IntegrityError, "fwtool trailer CRC does not match"),
    ("signed metadata", IntegrityError, "fwtool trailer CRC does not match"),
    ("resealed", IntegrityError, "usign signature by key .* does not verify"),
    ("untrusted", IntegrityError, "which is not trusted"),
    ("unsigned", IntegrityError, "not signed"),
    ("other board", IntegrityError, "an image for router-b, not for board router-a"),
    ("no trailer", FormatError, "no fwtool metadata trailer"),
])
def test_a_damaged_or_foreign_image_is_refused(fwtool, keys, tmp_path, damage, error, words):
    stranger, _ = usign.write_key_pair(tmp_path / "stranger")
    key = {"untrusted": stranger, "unsigned": None}.get(damage, keys[0])
    image = make_image(tmp_path, key=key, board="router-b" if damage == "other board" else "router-a",
                       devices=("router-b",) if damage == "other board" else ("router-a",))
    data = bytearray(image.read_bytes())
    if damage == "tar":
        data[2000] ^= 1  # in the kernel: fwtool's CRC catches it too
    elif damage == "signed metadata":
        data[data.index(b'"3.1"') + 1] ^= 1
    elif damage == "resealed":
        data = bytearray(_resealed(bytes(data)))
    elif damage == "no trailer":
        with tarfile.open(image) as tar:
            data = data[:tar.offset]
    image.write_bytes(bytes(data))
    if damage in ("tar", "signed metadata"):
        assert b"CRC error" in fwtool("-i", str(tmp_path / "m.json"), str(image)).stderr
    with pytest.raises(error, match=words) as refused:
        verify_sysupgrade(image, usign.load_keys([keys[1]]), board="router-a")
    assert "\n" not in str(refused.value) and str(refused.value).startswith(str(image))


def _resealed(image: bytes) -> bytes:
    """The image with a byte of its kernel changed and both trailers appended again, every
    CRC right and the old signature kept: what a tamperer who knows the format writes."""
    from fwgen.sysupgrade import METADATA_TYPE, SIGNATURE_TYPE, TRAILER, append_trailer

    signature_at = len(image) - TRAILER.parse(image[-16:]).size
    metadata_at = signature_at - TRAILER.parse(image[signature_at - 16:signature_at]).size  # where the tar ends
    changed = bytearray(image[:metadata_at])
    changed[2000] ^= 1
    resealed = append_trailer(bytes(changed), METADATA_TYPE, image[metadata_at:signature_at - 16])
    return append_trailer(resealed, SIGNATURE_TYPE, image[signature_at:-16])


# -- built by fwgen ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory, cache_dir):
    """The router with update:, built twice signed, from one package cache."""
    folder = tmp_path_factory.mktemp("sysupgrade-build")
    usign.write_key_pair(folder / "release")
    update = 'version: "2.0"\nupdate:\n  slots: single\n  keys: [release.pub]\n'
    outs, seconds = build_with_update(BOARD, "upd-router", folder, update, cache_dir)
    return folder, outs, seconds


@pytest.mark.network
def test_the_router_build_writes_a_sysupgrade_image_fwtool_reads(built, fwtool):
    folder, (out, _), _ = built
    image = out / "sysupgrade.bin"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["sysupgrade"]["file"] == "sysupgrade.bin"
    result = fwtool("-i", str(folder / "meta.json"), str(image))
    assert result.returncode == 0, result.stderr
    metadata = json.loads((folder / "meta.json").read_bytes())
    assert metadata["supported_devices"] == ["upd-router"]
    assert metadata["version"] == {"dist": "fwgen", "version": "2.0", "revision": "1700000000", "target": "mipsel",
                                   "board": "upd-router"}
    started = time.monotonic()
    read = verify_sysupgrade(image, usign.load_keys([folder / "release.pub"]), board="upd-router")
    seconds = time.monotonic() - started
    with tarfile.open(image) as tar:
        kernel = tar.extractfile("sysupgrade-upd-router/kernel").read()  # type: ignore[union-attr]
        root = tar.extractfile("sysupgrade-upd-router/root").read()  # type: ignore[union-attr]
    assert kernel == (out / "uImage").read_bytes()
    firmware = (out / "firmware.bin").read_bytes()
    assert root[:4] == b"hsqs" and root in firmware  # the squashfs the firmware partition holds
    bundle = verify_bundle(out / "update.bundle", usign.load_keys([folder / "release.pub"]), board="upd-router")
    assert [p["name"] for p in bundle.parts] == ["kernel", "rootfs"]
    assert bundle.parts[0]["sha256"] == manifest["outputs"]["uimage"]["sha256"]
    assert read.signature is not None
    print(f"\nrouter: sysupgrade.bin {image.stat().st_size:,} bytes, update.bundle "
          f"{(out / 'update.bundle').stat().st_size:,} bytes; verify {seconds:.2f} s")


@pytest.mark.network
def test_a_router_rebuild_gives_the_same_sysupgrade_image_and_bundle(built):
    _, (first, second), seconds = built
    for name in ("sysupgrade.bin", "update.bundle"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    print(f"\nbuilds of upd-router: {seconds[0]:.1f} s, {seconds[1]:.1f} s")


@pytest.mark.parametrize("metadata", [b'{"supported_devices": "router-a-v2"}\n', b'["router-a"]\n',
                                      b'{"supported_devices": ["router-a"], "version": "1"}\n'])
def test_metadata_of_another_shape_is_a_format_error(tmp_path, metadata):
    kernel, root, image = tmp_path / "k", tmp_path / "r", tmp_path / "image"
    kernel.write_bytes(b"k" * 100)
    root.write_bytes(b"r" * 100)
    write_sysupgrade(image, board="router-a", kernel=kernel, root=root, metadata=metadata, mtime=0)
    with pytest.raises(FormatError, match="no supported_devices list, or a version that is no object"):
        verify_sysupgrade(image, board="router-a")
