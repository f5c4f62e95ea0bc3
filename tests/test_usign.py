"""usign: OpenWrt's Ed25519 key and signature files."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from feedgen import UsignSigner

from fwgen import usign
from fwgen.errors import FormatError, IntegrityError

MESSAGE = b"Package: base-files\nVersion: 1\n"


@pytest.fixture()
def signer() -> UsignSigner:
    return UsignSigner.generate()


def test_key_file_layout_and_lookup_by_key_number(signer, tmp_path):
    path = signer.write_public(tmp_path)
    lines = path.read_text().splitlines()
    assert lines[0] == "untrusted comment: fwgen test key"
    payload = base64.b64decode(lines[1])
    assert len(payload) == 42 and payload[:2] == b"Ed" and payload[2:10] == signer.fingerprint
    assert payload[10:] == signer.private.public_key().public_bytes_raw()
    keys = usign.load_keys([tmp_path])
    assert list(keys) == [signer.fingerprint.hex()] == [path.name]


def test_signature_layout_and_verification(signer, tmp_path):
    signer.write_public(tmp_path)
    text = signer.sign(MESSAGE)
    payload = base64.b64decode(text.splitlines()[1])
    assert len(payload) == 74 and payload[:2] == b"Ed" and payload[2:10] == signer.fingerprint
    signature = usign.parse_signature(text)
    key = usign.verify(MESSAGE, signature, usign.load_keys([tmp_path]), "Packages")
    assert key.key_id == signer.fingerprint.hex()


def test_changed_message_or_signature_is_refused(signer, tmp_path):
    signer.write_public(tmp_path)
    keys = usign.load_keys([tmp_path])
    signature = usign.parse_signature(signer.sign(MESSAGE))
    for i in (0, len(MESSAGE) // 2, len(MESSAGE) - 1):
        changed = MESSAGE[:i] + bytes([MESSAGE[i] ^ 1]) + MESSAGE[i + 1 :]
        with pytest.raises(IntegrityError, match="does not verify"):
            usign.verify(changed, signature, keys, "Packages")
    bad = usign.UsignSignature(signature.fingerprint, bytes([signature.signature[0] ^ 1]) + signature.signature[1:], "")
    with pytest.raises(IntegrityError, match="does not verify"):
        usign.verify(MESSAGE, bad, keys, "Packages")


def test_signature_by_another_key_number_is_refused(signer, tmp_path):
    signer.write_public(tmp_path)
    other = UsignSigner(Ed25519PrivateKey.generate(), b"\x01" * 8)
    signature = usign.parse_signature(other.sign(MESSAGE))
    with pytest.raises(IntegrityError, match="usign key 0101010101010101, which is not trusted"):
        usign.verify(MESSAGE, signature, usign.load_keys([tmp_path]), "Packages")
    # Same key number, different key: the number only selects the key, the math decides.
    impostor = UsignSigner(Ed25519PrivateKey.generate(), signer.fingerprint)
    with pytest.raises(IntegrityError, match="does not verify"):
        usign.verify(MESSAGE, usign.parse_signature(impostor.sign(MESSAGE)), usign.load_keys([tmp_path]), "Packages")


@pytest.mark.parametrize(
    "text, message",
    [
        ("no comment line\nAAAA\n", "not a usign file"),
        ("untrusted comment: x\n!!!not base64!!!\n", "bad base64"),
        ("untrusted comment: x\nRWQ\u00e9\u00e9\n", "bad base64"),  # as a damaged Packages.sig decodes
        ("untrusted comment: x\n" + base64.b64encode(b"Ed" + bytes(40)).decode() + "\n", "signature is 42 bytes, expected 74"),
        ("untrusted comment: x\n" + base64.b64encode(b"XX" + bytes(72)).decode() + "\n", "not an Ed25519"),
    ],
)
def test_malformed_signature_files(text, message):
    with pytest.raises(FormatError, match=message):
        usign.parse_signature(text, "Packages.sig")



@pytest.mark.parametrize(("feed", "key_id"), [
    ("openwrt-core-mvebu", "d95e275d41a63bff"),
    ("openwrt-simonsmh-mt7621", "12bd84d19e263f64"),
])
def test_verify_trusts_a_usign_key_given_as_a_file(samples, feed, key_id, tmp_path):
    from buildutil import run_fwgen

    folder = samples / feed
    stanzas = (folder / "Packages").read_text().count("\nPackage: ") + 1
    result = run_fwgen("verify", str(folder / "Packages"), "--keys", str(folder / key_id), cache=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"opkg Packages: OK (key {key_id}): Packages: {stanzas} packages (usign Ed25519)"
    listed = sorted(folder.glob("*.ipk"))[0]
    result = run_fwgen("verify", str(listed), "--keys", str(folder / key_id), cache=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"ipk: OK (key {key_id}): ")
    assert "match the signed Packages beside it" in result.stdout


def test_a_key_file_named_on_its_own_must_be_a_usign_key(samples, tmp_path):
    rsa = tmp_path / "alpine.rsa.pub"
    rsa.write_text("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n")
    with pytest.raises(FormatError, match=r"alpine\.rsa\.pub: not a usign file"):
        usign.load_keys([rsa])
    # In a folder it is skipped, beside a key file named on its own.
    key = samples / "openwrt-core-mvebu" / "d95e275d41a63bff"
    assert list(usign.load_keys([tmp_path, key])) == ["d95e275d41a63bff"]
