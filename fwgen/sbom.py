"""The build's software bill of materials, as SPDX 2.3 JSON and CycloneDX 1.6 JSON.

Both describe the same components, taken from the manifest the build has just written: every
package (with its package URL, SHA-256, download URL, licence and the packages its
dependencies resolved to), the kernel, fwgen's BusyBox (source tarball, patches, configuration),
U-Boot, every overlay as a first-party component with its files' hashes, and the images with
theirs, each image related to what it holds (outputs.image_contents).

Same inputs, same bytes: no wall clock (the build's SOURCE_DATE_EPOCH is the creation time)
and no random UUID (the document's namespace and serial number derive from the hashes of
its inputs and outputs); no path of the build machine.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .licenses import BUSYBOX_LICENSE, NOASSERTION, License
from .outputs import BOOT, BOOTLOADER, KERNEL, ROOT
from .rootfs import EntryType, RootFS

SPDX_FILE = "sbom.spdx.json"
CYCLONEDX_FILE = "sbom.cdx.json"
# Where fwgen's SPDX document namespaces live: a URI unique per document, never fetched
# (SPDX 2.3 section 6.5). `.invalid` (RFC 2606) cannot clash with anyone's real one.
NAMESPACE = "https://fwgen.invalid/spdx"
# SPDX 2.3's grammar for a download location URL (its annex's downloadLocation pattern): a host
# name ending in a 2-5 letter top-level domain, no bare IP address or single-label host. A feed
# served otherwise (a lab mirror at 192.0.2.1:8080) is NOASSERTION there; CycloneDX keeps it.
_SPDX_URL = re.compile(r"(https?|ftp)://([\w\-.!~*'()%;:&=+$,]+@)?[a-z0-9]+([-.][a-z0-9]+)*\.[a-z]{2,5}"
                       r"(:[0-9]{1,5})?(/.*)?", re.IGNORECASE)


@dataclass
class Component:
    """One thing in the firmware, as both formats describe it."""

    ref: str  # the SPDX element id, also CycloneDX's bom-ref
    kind: str  # CycloneDX's component type
    name: str
    version: str = ""
    purl: str | None = None
    sha256: str | None = None
    download: str | None = None
    license: str = NOASSERTION
    supplier: str | None = None
    description: str = ""
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (path, data): an overlay's
    depends: list[str] = field(default_factory=list)  # refs it depends on
    contains: list[str] = field(default_factory=list)  # refs it holds (an image)
    patches: list[dict] = field(default_factory=list)  # {"name", "sha256"}: BusyBox's


def write_sboms(folder: Path, manifest: dict, *, rootfs: RootFS, licenses: Mapping[str, License],
                contents: Mapping[str, Sequence[str]]) -> dict[str, Path]:
    """Write sbom.spdx.json and sbom.cdx.json into `folder` (the build's staging folder,
    published whole); `contents` says what each output holds (outputs.image_contents)."""
    components = collect_components(manifest, rootfs, contents)
    texts = _license_texts(components, licenses)
    identity = _identity(manifest, components)
    written = {}
    for name, document in ((SPDX_FILE, spdx_document(manifest, components, texts, identity)),
                           (CYCLONEDX_FILE, cyclonedx_document(manifest, components, identity))):
        written[name] = folder / name
        written[name].write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return written


# -- the components ---------------------------------------------------------------------------
def collect_components(manifest: dict, rootfs: RootFS, contents: Mapping[str, Sequence[str]]) -> list[Component]:
    """Packages, kernel, BusyBox, U-Boot, overlays, then the images, in a stable order."""
    inputs = manifest["inputs"]
    packages = [_package(record, "library") for record in inputs["packages"]]
    by_name = {p.name: p for p in packages}
    for record, component in zip(inputs["packages"], packages, strict=True):
        component.depends = [by_name[name].ref for name in record.get("depends", []) if name in by_name]
    kernel = _kernel(inputs["kernel"])
    groups: dict[str, list[Component]] = {ROOT: list(packages), BOOT: [], KERNEL: [kernel], BOOTLOADER: []}
    busybox = _busybox(inputs["busybox"], by_name)
    if busybox is not None:
        groups[ROOT].append(busybox)
        groups[BOOT].append(busybox)
    groups[BOOT].append(kernel)  # its modules
    groups[ROOT].append(kernel)
    if "bootloader" in inputs:
        uboot = _package(inputs["bootloader"]["package"], "firmware")
        groups[BOOTLOADER].append(uboot)
    overlays = [_first_party("Overlay", o["name"], rootfs, "fwgen overlay") for o in inputs["overlays"]]
    overlays += [_first_party("Build", b["build"], rootfs, f"compiled by fwgen for an overlay (build {b['key']})")
                 for b in inputs.get("builds", [])]
    groups[ROOT] += overlays
    images = [_image(name, record, groups, contents.get(name, ()))
              for name, record in sorted(manifest["outputs"].items())]
    parts = [*packages, kernel, *([busybox] if busybox and busybox not in packages else []),
             *groups[BOOTLOADER], *overlays]
    return _unique(parts) + images


def _unique(components: list[Component]) -> list[Component]:
    seen: set[str] = set()
    return [c for c in components if not (c.ref in seen or seen.add(c.ref))]  # type: ignore[func-returns-value]


def _ref(kind: str, name: str) -> str:
    """An SPDX element id: SPDXRef- then letters, digits, . and - only (SPDX 2.3 section 7.2)."""
    return f"SPDXRef-{kind}-" + re.sub(r"[^A-Za-z0-9.-]+", "-", name)


def _package(record: dict, kind: str) -> Component:
    # A package file the board brings (package_files) has a file: URL, a path on the build
    # machine: not a place to download from, and not the same on another machine.
    download = None if record["url"].startswith("file:") else record["url"]
    return Component(
        ref=_ref("Package", record["name"]), kind=kind, name=record["name"], version=record["version"],
        purl=record.get("purl"), sha256=record["sha256"], download=download,
        license=record.get("license", NOASSERTION), description=f"package from feed {record['feed']}",
    )


def _kernel(record: dict) -> Component:
    if "name" in record:
        component = _package(record, "operating-system")
    else:  # a vendor's image, not a package
        component = Component(ref=_ref("Kernel", "vendor"), kind="operating-system", name="linux",
                              sha256=record["sha256"], license=record.get("license", NOASSERTION))
    component.version = component.version or record["release"]
    component.description = f"Linux {record['release']}, image {record['image']}"
    return component


def _busybox(record: dict, packages: dict[str, Component]) -> Component | None:
    """fwgen's own BusyBox (built from the pinned tarball with fwgen's patches and
    configuration), or the package BusyBox came from."""
    if "package" in record:
        return packages.get(record["package"])
    source = record["source"]
    return Component(
        ref=_ref("BusyBox", record["version"]), kind="application", name="busybox", version=record["version"],
        purl=f"pkg:generic/busybox@{record['version']}?download_url={source['url']}",
        sha256=record["sha256"], download=source["url"], license=record.get("license", BUSYBOX_LICENSE),
        supplier="fwgen",
        description=(f"static {record['libc']} BusyBox built by fwgen from {source['url']} "
                     f"(sha256 {source['sha256']}), .config sha256 {record['config_sha256']}"),
        patches=record["patches"],
    )


def _first_party(kind: str, name: str, rootfs: RootFS, description: str) -> Component:
    """An overlay (or a program an overlay has fwgen compile) as the image has it: its files,
    a later layer's replacements excluded; its version is a digest of them."""
    provenance = f"{kind.lower()}:{name}"
    files = sorted((e.path, e.data) for e in rootfs if e.provenance == provenance and e.type is EntryType.FILE)
    digest = hashlib.sha256(b"".join(p.encode() + b"\0" + hashlib.sha256(d).digest() for p, d in files))
    return Component(ref=_ref(kind, name), kind="application", name=name, version=digest.hexdigest()[:12],
                     supplier="the board's vendor (first-party)", description=f"{description} {name}",
                     files=files)


def _image(name: str, record: dict, groups: dict[str, list[Component]], holds: Sequence[str]) -> Component:
    contained = [c.ref for group in holds for c in groups[group]]
    return Component(ref=_ref("Image", name), kind="firmware", name=record["file"], sha256=record["sha256"],
                     description=f"fwgen output {name}, {record['size']} bytes", contains=list(dict.fromkeys(contained)))


def _identity(manifest: dict, components: list[Component]) -> uuid.UUID:
    """A UUID derived from what the SBOM describes: the board file's and every component's hash."""
    digest = hashlib.sha256(manifest["board"]["sha256"].encode())
    for c in components:
        digest.update(f"{c.ref}\0{c.version}\0{c.sha256}\0{c.license}\0".encode())
        for path, data in c.files:
            digest.update(path.encode() + hashlib.sha256(data).digest())
    return uuid.UUID(bytes=digest.digest()[:16], version=5)


def _license_texts(components: list[Component], licenses: Mapping[str, License]) -> dict[str, str]:
    """Every LicenseRef the components use, with its text where the package gives one."""
    given: dict[str, str] = {}
    for found in licenses.values():
        for ref, text in found.texts.items():
            if text:
                given.setdefault(ref, text)
    texts = {}
    for ref in sorted({r for c in components for r in re.findall(r"LicenseRef-[A-Za-z0-9.-]+", c.license)}):
        texts[ref] = given.get(ref) or (f"The package states this licence by a name with no SPDX identifier "
                                        f"({ref.removeprefix('LicenseRef-')}); its text is not in the package's index.")
    return texts


def _created(manifest: dict) -> str:
    epoch = manifest["source_date_epoch"]
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- SPDX 2.3 ---------------------------------------------------------------------------------
def spdx_document(manifest: dict, components: list[Component], texts: dict[str, str], identity: uuid.UUID) -> dict:
    board = manifest["board"]["name"]
    packages, files, relationships = [], [], []
    for c in components:
        packages.append(_spdx_package(c))
        for path, data in c.files:
            file_ref = _ref("File", f"{c.name}{path}")
            files.append({"SPDXID": file_ref, "fileName": "." + path, "checksums": [
                {"algorithm": "SHA1", "checksumValue": hashlib.sha1(data).hexdigest()},
                {"algorithm": "SHA256", "checksumValue": hashlib.sha256(data).hexdigest()}]})
            relationships.append(_relation(c.ref, "CONTAINS", file_ref))
        relationships += [_relation(c.ref, "DEPENDS_ON", d) for d in c.depends]
        relationships += [_relation(c.ref, "CONTAINS", d) for d in c.contains]
        if c.ref.startswith("SPDXRef-Image-"):
            relationships.insert(0, _relation("SPDXRef-DOCUMENT", "DESCRIBES", c.ref))
    document = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"fwgen-{board}",
        "documentNamespace": f"{NAMESPACE}/{board}-{identity}",
        "creationInfo": {"created": _created(manifest), "creators": [f"Tool: fwgen-{__version__}"]},
        "packages": packages,
        "files": files,
        "relationships": sorted(relationships, key=lambda r: r["relationshipType"] != "DESCRIBES"),
    }
    if texts:
        document["hasExtractedLicensingInfos"] = [
            {"licenseId": ref, "name": ref.removeprefix("LicenseRef-"), "extractedText": text}
            for ref, text in texts.items()]
    return document


def _relation(a: str, kind: str, b: str) -> dict:
    return {"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b}


_SPDX_PURPOSE = {"library": "LIBRARY", "operating-system": "OPERATING-SYSTEM", "application": "APPLICATION",
                 "firmware": "FIRMWARE"}


def _spdx_package(c: Component) -> dict:
    package: dict = {
        "SPDXID": c.ref, "name": c.name,
        "downloadLocation": c.download if c.download and _SPDX_URL.fullmatch(c.download) else NOASSERTION,
        "filesAnalyzed": bool(c.files), "licenseConcluded": NOASSERTION, "licenseDeclared": c.license,
        "copyrightText": NOASSERTION, "primaryPackagePurpose": _SPDX_PURPOSE[c.kind],
    }
    if c.version:
        package["versionInfo"] = c.version
    if c.supplier:
        package["supplier"] = f"Organization: {c.supplier}"
    if c.sha256:
        package["checksums"] = [{"algorithm": "SHA256", "checksumValue": c.sha256}]
    if c.purl:
        package["externalRefs"] = [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                    "referenceLocator": c.purl}]
    if c.files:
        # SPDX 2.3 section 7.9: SHA-1 of the sorted SHA-1s of the package's files.
        sha1s = sorted(hashlib.sha1(data).hexdigest() for _, data in c.files)
        package["packageVerificationCode"] = {
            "packageVerificationCodeValue": hashlib.sha1("".join(sha1s).encode()).hexdigest()}
    if c.patches:
        package["sourceInfo"] = "patched with " + ", ".join(f"{p['name']} (sha256 {p['sha256']})" for p in c.patches)
    if c.description:
        package["description"] = c.description
    return package


# -- CycloneDX 1.6 ----------------------------------------------------------------------------
def cyclonedx_document(manifest: dict, components: list[Component], identity: uuid.UUID) -> dict:
    board = manifest["board"]["name"]
    dependencies = [{"ref": c.ref, "dependsOn": [*c.depends, *c.contains]} for c in components]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{identity}",
        "version": 1,
        "metadata": {
            "timestamp": _created(manifest),
            "tools": {"components": [{"type": "application", "name": "fwgen", "version": __version__}]},
            "component": {"type": "firmware", "bom-ref": f"fwgen-{board}", "name": board,
                          "version": str(manifest["source_date_epoch"])},
        },
        "components": [_cyclonedx_component(c) for c in components],
        "dependencies": [{"ref": f"fwgen-{board}", "dependsOn": [c.ref for c in components if c.contains]},
                         *dependencies],
    }


def _cyclonedx_component(c: Component) -> dict:
    component: dict = {"type": c.kind, "bom-ref": c.ref, "name": c.name}
    if c.version:
        component["version"] = c.version
    if c.supplier:
        component["supplier"] = {"name": c.supplier}
    if c.description:
        component["description"] = c.description
    if c.sha256:
        component["hashes"] = [{"alg": "SHA-256", "content": c.sha256}]
    if c.license != NOASSERTION:
        component["licenses"] = [{"expression": c.license}]
    if c.purl:
        component["purl"] = c.purl
    if c.download:
        component["externalReferences"] = [{"type": "distribution", "url": c.download}]
    if c.patches:
        component["pedigree"] = {"patches": [
            {"type": "unofficial", "diff": {"text": {"content": f"{p['name']} sha256 {p['sha256']}"}}}
            for p in c.patches]}
    if c.files:
        component["components"] = [
            {"type": "file", "bom-ref": _ref("File", f"{c.name}{path}"), "name": path,
             "hashes": [{"alg": "SHA-256", "content": hashlib.sha256(data).hexdigest()}]}
            for path, data in c.files]
    return component
