"""apk's installed database as fwgen writes it, held to what apk-tools 2.12.4 itself writes:
the real Alpine 3.13.4 aarch64 packages of ../shared/samples installed by their own `apk`
(run under qemu-user, --no-scripts) into an empty root, then the same packages through
fwgen/fetch/apkdb.py."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from fwgen.fetch.apk import SHIPPED_KEYS, load_rsa_keys, read_apk, verify_apk
from fwgen.fetch.apkdb import InstalledApk, installed_stanza, scripts_tar, triggers_file
from fwgen.rootfs import EntryType

SAMPLE = "alpine-aarch64-3.13.4"
# What apk's own run of `add alpine-baselayout busybox musl apk-tools alpine-keys` installs.
TOOLS = ["musl-1.2.2-r0", "apk-tools-2.12.4-r0", "libcrypto1.1-1.1.1k-r0", "libssl1.1-1.1.1k-r0", "zlib-1.2.11-r3"]
WORLD = ["alpine-baselayout", "busybox", "musl", "apk-tools", "alpine-keys"]


def _installed(folder: Path) -> list[InstalledApk]:
    keys = load_rsa_keys((SHIPPED_KEYS,))
    packages = []
    for path in sorted(folder.glob("*.apk")):
        blob = path.read_bytes()
        entries = read_apk(blob, keys, path.name).entries
        packages.append(InstalledApk(verify_apk(blob, keys, path.name), len(blob), entries))
    return packages


def _unpack(packages: list[InstalledApk], root: Path) -> None:
    for package in packages:
        for entry in package.entries:
            target = root / entry.path.lstrip("/")
            if entry.type is EntryType.DIR:
                target.mkdir(parents=True, exist_ok=True)
            elif entry.type is EntryType.FILE:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(entry.data)
                target.chmod(entry.mode)
            elif entry.type is EntryType.SYMLINK and not os.path.lexists(target):
                target.symlink_to(entry.target)


@pytest.fixture(scope="module")
def apk_wrote(samples, tmp_path_factory) -> tuple[Path, list[InstalledApk]]:
    """A root apk-tools 2.12.4 installed the sample's base packages into."""
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static (qemu-user-static) is not installed")
    tmp = tmp_path_factory.mktemp("apkdb")
    folder = samples / SAMPLE
    packages = _installed(folder)
    tools = tmp / "tools"
    _unpack([p for p in packages if f"{p.name}-{p.version}" in TOOLS], tools)
    repo = tmp / "repo" / "v3.13" / "main"
    repo.mkdir(parents=True)
    (repo / "aarch64").symlink_to(folder)
    root = tmp / "root"
    (root / "etc" / "apk" / "keys").mkdir(parents=True)
    key = "alpine-devel@lists.alpinelinux.org-58199dcc.rsa.pub"
    shutil.copy(SHIPPED_KEYS / key, root / "etc" / "apk" / "keys" / key)
    subprocess.run(["qemu-aarch64-static", "-L", str(tools), str(tools / "sbin" / "apk"), "--root", str(root),
                    "--initdb", "--no-network", "--no-scripts", "--no-cache", "--arch", "aarch64",
                    "--repository", str(repo.parent / "main"), "add", *WORLD],
                   check=True, capture_output=True, timeout=120)
    return root, packages


def _stanzas(text: str) -> dict[str, str]:
    return {s.split("\nP:", 1)[1].split("\n", 1)[0]: s for s in text.split("\n\n") if s.strip()}


@pytest.mark.qemu
def test_installed_database_is_what_apk_tools_writes(apk_wrote):
    root, packages = apk_wrote
    theirs = _stanzas((root / "lib/apk/db/installed").read_text())
    ours = _stanzas("".join(installed_stanza(p) for p in packages if p.name in theirs))
    assert len(theirs) == 11 and set(ours) == set(theirs)
    for name in theirs:
        assert ours[name] == theirs[name], name
    # Each package's stanza is whole, with its files' checksums: busybox's binary among them.
    assert "R:busybox\na:0:0:755\nZ:Q1" in ours["busybox"]


@pytest.mark.qemu
def test_triggers_and_scripts_are_what_apk_tools_writes(apk_wrote):
    root, packages = apk_wrote
    chosen = [p for p in packages if p.name in _stanzas((root / "lib/apk/db/installed").read_text())]
    assert sorted(triggers_file(chosen).splitlines()) == sorted((root / "lib/apk/db/triggers").read_text().splitlines())

    def members(blob: bytes) -> dict[str, bytes]:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]

    theirs = members((root / "lib/apk/db/scripts.tar").read_bytes())
    assert members(scripts_tar(chosen, 0)) == theirs
    assert any(name.endswith(".post-install") and name.startswith("busybox-1.32.1-r5.Q1") for name in theirs)
    assert (root / "etc/apk/world").read_text() == "".join(f"{n}\n" for n in sorted(WORLD))
