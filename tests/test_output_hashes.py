"""qemu-aarch64 built today gives the images recorded in tests/data/qemu-aarch64.outputs.json.

A guard for changes meant to leave the output alone (restructuring, speed-ups): same inputs,
same bytes. The record holds the inputs fwgen does not control (each package's, the kernel's
and BusyBox's SHA-256, as the manifest names them) and what fwgen made of them: the SHA-256 of
every output file, and of manifest.json with the checkout's path replaced by "<repo>".

When the Debian mirror moves (a point release or a security update replaces a package), the
inputs differ and the test skips naming what moved. That skip says nothing about fwgen, so
this test is marked `mirror_pinned` and CI lets it skip (conftest.py); an unreachable mirror
still fails it, since the build raises instead of skipping. When a change is meant to alter the output, or the mirror moved, refresh the
record and commit it with the change that explains it:

    FWGEN_RECORD_OUTPUTS=1 python3 -m pytest tests/test_output_hashes.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from buildutil import REPO

from fwgen.build import build
from fwgen.cache import Cache
from fwgen.config import load_board

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.mirror_pinned]

BOARD = "qemu-aarch64"
RECORD = Path(__file__).parent / "data" / f"{BOARD}.outputs.json"
EPOCH = 1700000000  # SOURCE_DATE_EPOCH of the recorded build


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_of(outdir: Path) -> dict:
    """The inputs fwgen does not control and the hashes of what it wrote."""
    text = (outdir / "manifest.json").read_text()
    manifest = json.loads(text)
    inputs = manifest["inputs"]
    return {
        "inputs": {
            "packages": {p["name"]: p["sha256"] for p in inputs["packages"]},
            "kernel": inputs["kernel"]["sha256"],
            "busybox": inputs["busybox"]["sha256"],
        },
        "outputs": {path.name: sha256(path.read_bytes()) for path in sorted(outdir.iterdir())
                    if path.is_file() and path.name != "manifest.json"},
        "manifest": sha256(text.replace(str(REPO), "<repo>").encode()),
    }


def moved_inputs(recorded: dict, today: dict) -> list[str]:
    moved = [f"{name} ({'new' if name not in recorded['packages'] else 'changed'})"
             for name, digest in today["packages"].items() if recorded["packages"].get(name) != digest]
    moved += [f"{name} (gone)" for name in recorded["packages"] if name not in today["packages"]]
    moved += [name for name in ("kernel", "busybox") if recorded[name] != today[name]]
    return moved


def test_qemu_aarch64_outputs_are_the_recorded_bytes(tmp_path, cache_dir):
    board = load_board(BOARD)
    outdir = tmp_path / BOARD
    build(board, outdir=outdir, cache=Cache(cache_dir), source_date_epoch=EPOCH)
    today = record_of(outdir)
    if os.environ.get("FWGEN_RECORD_OUTPUTS") == "1":
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(today, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"recorded {RECORD.name}: commit it with the change that explains it")
    recorded = json.loads(RECORD.read_text())
    moved = moved_inputs(recorded["inputs"], today["inputs"])
    if moved:
        pytest.skip(f"the inputs moved since {RECORD.name} was recorded: {', '.join(moved)}; "
                    "refresh it (see this module's docstring)")
    assert today["outputs"] == recorded["outputs"], "the images differ from the recorded ones"
    assert today["manifest"] == recorded["manifest"], "manifest.json differs from the recorded one"
