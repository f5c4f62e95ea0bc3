"""Helpers shared by the end-to-end tests: run the real CLI, load the real boards."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_fwgen(*args: str, cache: Path, cwd: Path | None = None, env: dict | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run `python -m fwgen.cli ARGS` as a user would, with the test package cache."""
    full_env = dict(os.environ, FWGEN_CACHE=str(cache), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "fwgen.cli", *args],
        capture_output=True, text=True, cwd=cwd or REPO, env=full_env, timeout=timeout,
    )


def boot_with_declared_firmware_only(board_name: str, outdir: Path, workdir: Path) -> float:
    """Boot a built board to its ready line with QEMU finding only the firmware files its
    profile declares (fwgen.qemu.confine_firmware), as on a minimal QEMU install whatever
    this host has; the seconds to ready. QEMU stops at start on any undeclared ROM."""
    from fwgen.boot import READY_MARKER, boot_spec_for
    from fwgen.config import load_board
    from fwgen.qemu import Machine, confine_firmware

    spec = boot_spec_for(load_board(board_name), outdir, fresh_disk=True)
    spec = replace(spec, profile=confine_firmware(spec.profile, workdir / "qemu"))
    factor = float(os.environ.get("FWGEN_TIMEOUT_FACTOR", "1"))
    with Machine(spec, workdir, timeout_factor=factor) as machine:
        machine.start()
        seconds = machine.wait_for(READY_MARKER, timeout=spec.ready_timeout)
        assert machine.argv[:3] == [spec.profile.binary, "-M", spec.profile.machine]
        machine.poweroff()
    return seconds


def build_with_update(template: str, name: str, folder: Path, update: str, cache: Path,
                      times: int = 2) -> tuple[list[Path], list[float]]:
    """Build boards/TEMPLATE renamed NAME with `update` (YAML: version:, update:) appended,
    signed with folder/release.key, `times` times from one package cache and one
    SOURCE_DATE_EPOCH; the output folders and the seconds each build took."""
    import time

    text = (REPO / "boards" / f"{template}.yaml").read_text().replace(f"name: {template}\n", f"name: {name}\n")
    board = folder / f"{name}.yaml"
    board.write_text(text + update)
    outs, seconds = [], []
    for n in range(1, times + 1):
        started = time.monotonic()
        result = run_fwgen("build", str(board), "--out", str(folder / f"out{n}"), "--sign", str(folder / "release.key"),
                           cache=cache, env={"SOURCE_DATE_EPOCH": "1700000000"})
        seconds.append(time.monotonic() - started)
        assert result.returncode == 0, result.stdout + result.stderr
        outs.append(folder / f"out{n}" / name)
    return outs, seconds


def check_sboms(outdir: Path) -> tuple[dict, dict]:
    """Validate a build's SBOMs with the formats' own libraries (spdx-tools' validator,
    cyclonedx-python-lib's strict JSON schema for 1.6) and hold them to its manifest: every
    package by its purl, the kernel, BusyBox, U-Boot, every overlay with its files' hashes,
    and every output with the SHA-256 of its file. Returns (SPDX, CycloneDX) as parsed JSON."""
    import hashlib
    import json

    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    problems = validate_full_spdx_document(parse_file(str(outdir / "sbom.spdx.json")))
    assert not problems, [p.validation_message for p in problems[:5]]
    cdx_text = (outdir / "sbom.cdx.json").read_text()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(cdx_text)
    assert error is None, error
    spdx, cdx = json.loads((outdir / "sbom.spdx.json").read_text()), json.loads(cdx_text)
    manifest = json.loads((outdir / "manifest.json").read_text())
    inputs = manifest["inputs"]
    packages = {p["name"]: p for p in spdx["packages"]}
    purls = {ref["referenceLocator"] for p in spdx["packages"] for ref in p.get("externalRefs", [])}
    cdx_purls = {c["purl"] for c in cdx["components"] if "purl" in c}
    wanted = [*inputs["packages"], *([inputs["kernel"]] if "name" in inputs["kernel"] else []),
              *([inputs["bootloader"]["package"]] if "bootloader" in inputs else [])]
    for record in wanted:
        assert record["purl"] in purls and record["purl"] in cdx_purls, record["purl"]
        assert packages[record["name"]]["licenseDeclared"] == record["license"]
    if "license" in inputs["busybox"]:
        assert packages["busybox"]["licenseDeclared"] == "GPL-2.0-only"
        assert inputs["busybox"]["source"]["sha256"] in packages["busybox"]["description"]
    for overlay in inputs["overlays"]:
        assert overlay["name"] in packages and packages[overlay["name"]]["filesAnalyzed"]
    relations = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in spdx["relationships"]}
    for output in manifest["outputs"].values():
        image = packages[output["file"]]
        assert image["checksums"] == [{"algorithm": "SHA256", "checksumValue": output["sha256"]}]
        assert hashlib.sha256((outdir / output["file"]).read_bytes()).hexdigest() == output["sha256"]
        assert ("SPDXRef-DOCUMENT", "DESCRIBES", image["SPDXID"]) in relations
    contained = {b for a, kind, b in relations if kind == "CONTAINS" and a.startswith("SPDXRef-Image-")}
    assert {packages[r["name"]]["SPDXID"] for r in wanted} <= contained
    return spdx, cdx
