"""A build published to an OCI registry as one artifact, and pulled back verified.

`publish_build` pushes every file of a build folder (kernel, images, manifest.json, SBOMs,
signatures: whatever the build wrote; the emulated device's state is outside it) as the layers
of one manifest (artifact type `application/vnd.fwgen.firmware.v1`), each layer titled with
its file name and typed by it, the manifest annotated with the board, its version, the build
id (the SHA-256 of manifest.json) and fwgen's version. Devices and test labs fetch firmware
from registries the vendor already runs.

`pull_build` downloads every layer into a temporary folder beside the destination, keeping
each only if its SHA-256 and size are the manifest's, checks the outputs manifest.json lists
against their recorded SHA-256, then renames the folder into place: the destination holds the
whole verified build or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from .errors import IntegrityError, UserError
from .files import hash_file
from .oci import Layer, Reference, Registry, layer_file_name

ARTIFACT_TYPE = "application/vnd.fwgen.firmware.v1"
MANIFEST_FILE = "manifest.json"

# Media types by file name, most specific first: registries and tools show them, and a device
# can pick the layer it needs (its image) without knowing fwgen's file names.
_MEDIA_TYPES = (
    (MANIFEST_FILE, "application/vnd.fwgen.manifest.v1+json"),
    (".spdx.json", "application/spdx+json"),
    (".cdx.json", "application/vnd.cyclonedx+json"),
    (".sig", "application/vnd.fwgen.signature"),
    (".json", "application/json"),
    (".cpio.gz", "application/vnd.fwgen.initramfs.cpio+gzip"),
    (".cpio.xz", "application/vnd.fwgen.initramfs.cpio+xz"),
    (".cpio.zst", "application/vnd.fwgen.initramfs.cpio+zstd"),
    (".sqfs", "application/vnd.fwgen.squashfs"),
    (".squashfs", "application/vnd.fwgen.squashfs"),
    (".itb", "application/vnd.fwgen.fit"),
    (".dtb", "application/vnd.fwgen.dtb"),
    (".img", "application/vnd.fwgen.disk-image"),
    (".bin", "application/vnd.fwgen.flash-image"),
    ("kernel", "application/vnd.fwgen.kernel"),
)


def media_type(name: str) -> str:
    """The media type a published file gets, from its name."""
    for suffix, kind in _MEDIA_TYPES:
        if name == suffix or name.endswith(suffix):
            return kind
    return "application/octet-stream"


def build_annotations(build: Path, version: str | None) -> dict[str, str]:
    """The manifest's annotations for the build in `build` (from its manifest.json)."""
    manifest_path = build / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        board, fwgen_version = manifest["board"]["name"], manifest["fwgen"]
    except FileNotFoundError:
        raise UserError(f"{build}: no {MANIFEST_FILE}: not a build folder", "build the board first") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{manifest_path}: not a build manifest ({type(e).__name__}: {e})") from None
    annotations = {
        "org.opencontainers.image.title": board,
        "org.fwgen.board": board,
        "org.fwgen.build.id": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        "org.fwgen.fwgen.version": str(fwgen_version),
    }
    if version is not None:
        annotations["org.opencontainers.image.version"] = version
    epoch = manifest.get("source_date_epoch")
    if isinstance(epoch, int):  # the build's own date, so publishing twice gives one manifest
        annotations["org.opencontainers.image.created"] = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return annotations


def publish_build(build: Path, reference: Reference, *, version: str | None) -> tuple[str, list[str]]:
    """Push the build folder `build` as one artifact tagged `reference.tag`; return the
    manifest's digest and the files pushed."""
    assert reference.tag is not None
    annotations = build_annotations(build, version)
    files = sorted(p for p in Path(build).iterdir() if p.is_file())
    layers = [Layer(p, p.name, media_type(p.name)) for p in files]
    digest = Registry(reference).push(reference.tag, layers, artifact_type=ARTIFACT_TYPE, annotations=annotations)
    return digest, [p.name for p in files]


def pull_build(reference: Reference, dest: Path) -> list[str]:
    """Fetch the artifact `reference` into the folder `dest` (absent or empty), every file
    verified; return the file names. IntegrityError on a file that does not verify."""
    assert reference.tag is not None
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest}: exists and is not an empty folder", "pull into a new folder")
    registry = Registry(reference)
    manifest = registry.manifest(reference.tag)
    if manifest is None:
        raise UserError(f"{reference}: no such tag in the registry")
    try:
        layers = [(layer_file_name(layer), layer) for layer in manifest["layers"]]
    except IntegrityError as e:
        raise IntegrityError(f"{reference}: {e}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pull-", dir=dest.parent))
    try:
        for name, layer in layers:
            try:
                registry.pull_layer(layer, tmp / name)
            except IntegrityError as e:
                raise IntegrityError(f"{reference}: {e}", "refused: nothing was written") from None
        _check_outputs(tmp, reference)
        with contextlib.suppress(FileNotFoundError):
            dest.rmdir()  # the empty folder the user named
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [name for name, _ in layers]


def _check_outputs(folder: Path, reference: Reference) -> None:
    """The outputs manifest.json lists, where pulled, must be the files it describes."""
    try:
        outputs = json.loads((folder / MANIFEST_FILE).read_text()).get("outputs", {})
    except (OSError, ValueError, AttributeError):
        return  # an artifact fwgen did not make: its layer digests are all there is to check
    for name, output in outputs.items():
        path = folder / str(output.get("file", ""))
        if not output.get("file") or not path.is_file():
            continue
        if hash_file(path) != output.get("sha256"):
            raise IntegrityError(f"{reference}: {path.name} is not the {name} output its manifest.json describes",
                                 "refused: nothing was written")
