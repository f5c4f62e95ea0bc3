"""Update bundles (fwgen/bundle.py, UPDATE-BUNDLE.md) and their keys (fwgen keygen/sign/verify).

Independent checks: Debian's signify-openbsd verifies fwgen's signatures with fwgen's public
key, signs with fwgen's secret key to the same bytes (Ed25519 is deterministic), and a key it
made signs bundles fwgen verifies. GNU tar lists the bundle.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from buildutil import REPO, build_with_update, run_fwgen

from fwgen import usign
from fwgen.bundle import build_metadata, part_for, sign_bundle, verify_bundle, write_bundle
from fwgen.errors import FormatError, IntegrityError, UserError

SIGNIFY = shutil.which("signify-openbsd") or shutil.which("signify")
needs_signify = pytest.mark.skipif(SIGNIFY is None, reason="signify-openbsd not installed (.ci/setup installs it)")
BOARD = "qemu-aarch64-uboot"


def fwgen(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI for commands that need no package cache (keygen, sign, verify)."""
    return run_fwgen(*args, cache=Path("/nonexistent-cache"), cwd=cwd, timeout=120)


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fwgen: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def keys(tmp_path) -> tuple[Path, Path]:
    return usign.write_key_pair(tmp_path / "release")


def make_bundle(folder: Path, *, key: Path | None = None, board: str = "board-a", epoch: int = 1700000000,
                name: str = "update.bundle") -> Path:
    """A bundle of two small parts, as the build writes one."""
    fit, root = folder / "fit.bin", folder / "root.bin"
    fit.write_bytes(b"FIT" + bytes(range(256)) * 40)
    root.write_bytes(b"hsqs" + bytes(5000))
    parts = [part_for("fit", fit), part_for("rootfs", root)]
    metadata = build_metadata(board=board, compatible=(board, "board-a-v2"), version="2.0", build_id=str(epoch),
                              slots="ab", parts=parts)
    path = folder / name
    write_bundle(path, metadata, parts, mtime=epoch, key=usign.load_secret_key(key) if key else None)
    return path


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def member_offset(path: Path, name: str) -> int:
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset_data


# -- keys -----------------------------------------------------------------------------------
def test_keygen_writes_a_private_secret_key_and_a_public_key(keys):
    secret, public = keys
    assert secret.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o077 == public.stat().st_mode & 0o044  # readable, never writable by others
    payload = base64.b64decode(secret.read_text().splitlines()[1])
    # "Ed", "BK", 0 rounds (unencrypted), salt, checksum, key number, 64-byte secret key
    assert len(payload) == 104 and payload[:4] == b"EdBK" and payload[4:8] == bytes(4)
    loaded = usign.load_secret_key(secret)
    assert payload[32:40] == loaded.fingerprint and payload[40:72] == loaded.private.private_bytes_raw()
    [key] = usign.load_keys([public]).values()
    assert key.key_id == loaded.key_id and secret.read_text().startswith("untrusted comment: ")
    assert not list(secret.parent.glob(".*.tmp"))


def test_keygen_on_the_command_line_never_overwrites(tmp_path):
    made = fwgen("keygen", str(tmp_path / "j"))
    assert made.returncode == 0 and "j.pub: public key" in made.stdout, made.stderr
    before = (tmp_path / "j.key").read_bytes()
    error = one_line_error(fwgen("keygen", str(tmp_path / "j")), "j.key", "exists already")
    assert "overwrite" in error and (tmp_path / "j.key").read_bytes() == before
    (tmp_path / "k.pub").write_text("mine\n")
    with pytest.raises(UserError, match="k.pub: exists already"):
        usign.write_key_pair(tmp_path / "k")
    assert not (tmp_path / "k.key").exists() and (tmp_path / "k.pub").read_text() == "mine\n"


@needs_signify
def test_signify_verifies_fwgens_signature_and_signs_the_same_with_fwgens_secret_key(keys, tmp_path):
    secret, public = keys
    message = tmp_path / "message"
    message.write_bytes(b"firmware metadata\n")
    (tmp_path / "message.sig").write_text(usign.load_secret_key(secret).sign(message.read_bytes()))
    checked = subprocess.run([SIGNIFY, "-V", "-p", str(public), "-m", str(message)], capture_output=True, text=True)
    assert checked.returncode == 0 and "Signature Verified" in checked.stdout, checked.stderr
    # signify wants a secret key named .sec; it reads fwgen's file as its own
    shutil.copy(secret, tmp_path / "release.sec")
    subprocess.run([SIGNIFY, "-S", "-s", str(tmp_path / "release.sec"), "-m", str(message),
                    "-x", str(tmp_path / "by-signify.sig")], check=True, capture_output=True)
    ours, theirs = ((tmp_path / n).read_text().splitlines()[1] for n in ("message.sig", "by-signify.sig"))
    assert ours == theirs
    message.write_bytes(b"firmware metadata!\n")
    refused = subprocess.run([SIGNIFY, "-V", "-p", str(public), "-m", str(message)], capture_output=True, text=True)
    assert refused.returncode != 0 and "verification failed" in refused.stderr


@needs_signify
def test_a_key_signify_made_signs_bundles_fwgen_verifies_and_signify_checks_the_metadata(tmp_path):
    subprocess.run([SIGNIFY, "-G", "-n", "-p", str(tmp_path / "vendor.pub"), "-s", str(tmp_path / "vendor.sec")],
                   check=True, capture_output=True)
    bundle = make_bundle(tmp_path)
    signed = fwgen("sign", str(bundle), "--key", str(tmp_path / "vendor.sec"))
    assert signed.returncode == 0, signed.stderr
    result = fwgen("verify", str(bundle), "--key", str(tmp_path / "vendor.pub"), "--board", "board-a")
    assert result.returncode == 0, result.stderr
    assert "signature verified" in result.stdout and "version 2.0" in result.stdout
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path / "x", members=[tar.getmember("metadata.json"), tar.getmember("metadata.json.sig")],
                       filter="data")
    checked = subprocess.run([SIGNIFY, "-V", "-p", str(tmp_path / "vendor.pub"), "-m",
                              str(tmp_path / "x" / "metadata.json"), "-x", str(tmp_path / "x" / "metadata.json.sig")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_an_encrypted_or_damaged_secret_key_is_refused(keys):
    secret, _ = keys
    comment, line = secret.read_text().splitlines()
    payload = bytearray(base64.b64decode(line))
    encrypted = bytes(payload[:4]) + (42).to_bytes(4, "big") + bytes(payload[8:])
    with pytest.raises(FormatError, match="encrypted with a passphrase"):
        usign.parse_secret_key(f"{comment}\n{base64.b64encode(encrypted).decode()}\n", "k.key")
    payload[-40] ^= 1  # in the seed: the checksum no longer matches
    with pytest.raises(FormatError, match="does not match its checksum"):
        usign.parse_secret_key(f"{comment}\n{base64.b64encode(bytes(payload)).decode()}\n", "k.key")
    with pytest.raises(FormatError, match="secret key is 42 bytes"):
        usign.parse_secret_key(f"{comment}\n{base64.b64encode(bytes(payload[:42])).decode()}\n", "k.key")


# -- the bundle -----------------------------------------------------------------------------
def test_bundle_layout_is_the_documented_one(keys, tmp_path):
    bundle = make_bundle(tmp_path, key=keys[0])
    listed = subprocess.run(["tar", "--numeric-owner", "-tvf", str(bundle)], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert [line.split()[-1] for line in listed] == ["metadata.json", "metadata.json.sig", "fit.itb", "rootfs.squashfs"]
    assert all(line.startswith("-rw-r--r-- 0/0 ") and "2023-11-14" in line for line in listed), listed
    with tarfile.open(bundle) as tar:
        raw = tar.extractfile("metadata.json").read()  # type: ignore[union-attr]
        assert all(m.uname == m.gname == "" for m in tar.getmembers())
        assert bundle.read_bytes()[257:263] == b"ustar\x00"  # POSIX ustar, no pax or GNU headers
    metadata = json.loads(raw)
    assert raw == (json.dumps(metadata, sort_keys=True, indent=1) + "\n").encode()
    assert metadata["parts"][0] == {"name": "fit", "file": "fit.itb", "size": (tmp_path / "fit.bin").stat().st_size,
                                    "sha256": hashlib.sha256((tmp_path / "fit.bin").read_bytes()).hexdigest()}
    assert (metadata["format"], metadata["board"], metadata["compatible"], metadata["slots"]) == \
        (1, "board-a", ["board-a", "board-a-v2"], "ab")


def test_bundles_from_the_same_inputs_are_byte_identical(keys, tmp_path):
    first = make_bundle(tmp_path, key=keys[0], name="a.bundle")
    second = make_bundle(tmp_path, key=keys[0], name="b.bundle")
    assert first.read_bytes() == second.read_bytes()
    unsigned = make_bundle(tmp_path, name="c.bundle")
    sign_bundle(unsigned, usign.load_secret_key(keys[0]))
    assert unsigned.read_bytes() == first.read_bytes()  # signing later gives the bundle --sign gives


@pytest.mark.parametrize("damage, error, words", [
    ("part", IntegrityError, "part rootfs \\(rootfs.squashfs\\): sha256 .* is not the"),
    ("first part", IntegrityError, "part fit \\(fit.itb\\): sha256"),
    ("metadata", IntegrityError, "metadata.json: usign signature by key .* does not verify"),
    ("untrusted", IntegrityError, "signed by usign key .*, which is not trusted"),
    ("unsigned", IntegrityError, "not signed .*devices refuse it"),
    ("other board", IntegrityError, "a bundle for board-b, board-a-v2, not for board board-a"),
    ("tar header", FormatError, "not an update bundle"),
    ("truncated", FormatError, "damaged one"),
])
def test_a_damaged_or_foreign_bundle_is_refused(keys, tmp_path, damage, error, words):
    secret, public = keys
    stranger, _ = usign.write_key_pair(tmp_path / "stranger")
    key = {"untrusted": stranger, "unsigned": None}.get(damage, secret)
    bundle = make_bundle(tmp_path, key=key, board="board-b" if damage == "other board" else "board-a")
    if damage == "part":
        flip_byte(bundle, member_offset(bundle, "rootfs.squashfs") + 100)
    elif damage == "first part":
        flip_byte(bundle, member_offset(bundle, "fit.itb"))
    elif damage == "metadata":  # "version": "2.0" becomes "3.0": still JSON, no longer what was signed
        flip_byte(bundle, bundle.read_bytes().index(b'"version": "2.0"') + len('"version": "'))
    elif damage == "tar header":
        flip_byte(bundle, 3)  # the first member's name
    elif damage == "truncated":
        bundle.write_bytes(bundle.read_bytes()[:member_offset(bundle, "rootfs.squashfs") + 10])
    with pytest.raises(error, match=f"^{bundle}: .*{words}") as refused:
        verify_bundle(bundle, usign.load_keys([public]), board="board-a")
    assert "\n" not in str(refused.value)


def test_refusals_on_the_command_line_are_one_line_and_exit_2(keys, tmp_path):
    bundle = make_bundle(tmp_path, key=keys[0], board="board-b")
    one_line_error(fwgen("verify", str(bundle), "--key", str(keys[1]), "--board", "board-a"),
                   "a bundle for board-b", "not for board board-a")
    flip_byte(bundle, member_offset(bundle, "rootfs.squashfs") + 100)
    one_line_error(fwgen("verify", str(bundle)), "part rootfs", "sha256")


def test_a_part_flipped_after_signing_is_refused_even_without_a_key(tmp_path, keys):
    bundle = make_bundle(tmp_path, key=keys[0])
    report = verify_bundle(bundle)
    assert report.signed_by is None and "signature NOT checked" in report.summary()
    flip_byte(bundle, member_offset(bundle, "rootfs.squashfs") + 4000)
    with pytest.raises(IntegrityError, match="sha256"):
        verify_bundle(bundle)
    with pytest.raises(IntegrityError, match="sha256"):
        sign_bundle(bundle, usign.load_secret_key(keys[0]))  # a damaged bundle is never signed


def test_verify_reads_what_the_bundle_says(keys, tmp_path):
    bundle = make_bundle(tmp_path, key=keys[0])
    report = verify_bundle(bundle, usign.load_keys([keys[1]]), board="board-a-v2")
    assert report.signed_by == usign.load_secret_key(keys[0]).key_id
    assert [(p["name"], p["size"]) for p in report.parts] == [("fit", 3 + 256 * 40), ("rootfs", 5004)]
    shown = json.loads(fwgen("verify", str(bundle), "--key", str(keys[1]), "--json").stdout)
    assert shown["ok"] and shown["board"] == "board-a" and shown["signed_by"] == report.signed_by


def test_sign_refuses_what_is_not_a_bundle_and_a_public_key(keys, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    one_line_error(fwgen("sign", str(other), "--key", str(keys[0])), "notes.txt",
                   "not an update bundle, a sysupgrade image or a build folder")
    with pytest.raises(FormatError, match="release.pub: secret key is 42 bytes"):
        usign.load_secret_key(keys[1])


def test_a_board_with_update_needs_a_root_partition(tmp_path):
    from fwgen.config import load_board

    text = (REPO / "boards" / "qemu-aarch64.yaml").read_text()
    board = tmp_path / "initramfs-only.yaml"
    board.write_text(text.replace("name: qemu-aarch64\n", "name: initramfs-only\n") + "update:\n  slots: single\n")
    with pytest.raises(UserError, match=r"initramfs-only.yaml:\d+:\d+: an update bundle carries a root partition"):
        load_board(str(board))


# -- built by fwgen ---------------------------------------------------------------------------
UPDATE = 'version: "1.4"\nupdate:\n  keys: [release.pub]\n'


@pytest.fixture(scope="module")
def built(tmp_path_factory, cache_dir):
    """The U-Boot board with update:, built twice signed (to compare), from one package cache."""
    folder = tmp_path_factory.mktemp("bundle-build")
    usign.write_key_pair(folder / "release")
    outs, seconds = build_with_update(BOARD, "upd-aarch64", folder, UPDATE, cache_dir)
    return folder, outs, seconds


@pytest.mark.network
def test_the_build_writes_a_signed_bundle_of_the_fit_and_the_root(built):
    folder, (out, _), _ = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["bundle"]["file"] == "update.bundle"
    started = time.monotonic()
    result = fwgen("verify", str(out / "update.bundle"), "--key", str(folder / "release.pub"), "--board", "upd-aarch64")
    verify_seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    report = verify_bundle(out / "update.bundle", usign.load_keys([folder / "release.pub"]))
    assert report.metadata["version"] == "1.4" and report.metadata["build_id"] == "1700000000"
    fit, root = report.parts
    assert (fit["name"], fit["sha256"]) == ("fit", manifest["outputs"]["fit"]["sha256"])
    assert root["name"] == "rootfs" and not (out / "rootfs.squashfs").exists()  # not asked for as an output
    with tarfile.open(out / "update.bundle") as tar:
        squashfs = tar.extractfile("rootfs.squashfs").read()  # type: ignore[union-attr]
    disk = (out / "disk.img").read_bytes()
    assert squashfs[:4] == b"hsqs" and squashfs in disk  # the bytes of the disk's root partition
    print(f"\nbundle {(out / 'update.bundle').stat().st_size:,} bytes, verify {verify_seconds:.2f} s (CLI)")


@pytest.mark.network
def test_a_rebuild_gives_the_same_bundle(built):
    _, (first, second), seconds = built
    assert (first / "update.bundle").read_bytes() == (second / "update.bundle").read_bytes()
    print(f"\nbuilds of {BOARD} with update: {seconds[0]:.1f} s, {seconds[1]:.1f} s")


@pytest.mark.network
def test_the_secret_key_is_in_no_output(built):
    folder, (out, _), _ = built
    secret = usign.load_secret_key(folder / "release.key")
    seed = secret.private.private_bytes_raw()
    line = (folder / "release.key").read_text().splitlines()[1].encode()
    for path in out.iterdir():
        if path.is_file():
            data = path.read_bytes()
            assert seed not in data and line not in data and b"release.key" not in data, path.name
    assert not any(seed in p.read_bytes() for p in out.rglob("*") if p.is_file() and p.stat().st_size < 1 << 20)


@pytest.mark.network
def test_signing_with_a_key_the_board_does_not_trust_stops_the_build_at_once(built, cache_dir):
    folder, _, _ = built
    usign.write_key_pair(folder / "stranger")
    result = run_fwgen("build", str(folder / "upd-aarch64.yaml"), "--out",
                       str(folder / "out-stranger"), "--sign", str(folder / "stranger.key"), cache=cache_dir)
    one_line_error(result, "upd-aarch64.yaml", "update.keys does not list the signing key")
    assert not (folder / "out-stranger").exists()



@pytest.mark.parametrize("change, words", [
    ({"compatible": [1]}, "compatible: not a list of names"),
    ({"compatible": []}, "compatible: not a list of names"),
    ({"format": 2}, "format 2, fwgen reads format 1"),
    ({"parts": [{"name": "fit"}]}, r"parts\[0\]: needs name, file, size and sha256"),
])
def test_malformed_metadata_of_an_unsigned_bundle_is_a_format_error(tmp_path, change, words):
    bundle = make_bundle(tmp_path)
    with tarfile.open(bundle) as tar:
        metadata = json.loads(tar.extractfile("metadata.json").read())  # type: ignore[union-attr]
    parts = [part_for("fit", tmp_path / "fit.bin"), part_for("rootfs", tmp_path / "root.bin")]
    write_bundle(bundle, json.dumps(dict(metadata, **change)).encode(), parts, mtime=0)
    with pytest.raises(FormatError, match=words):
        verify_bundle(bundle, board="board-a")
