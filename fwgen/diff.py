"""What changed between two builds (or two manifests): what a release reviewer reads.

    changes = diff_builds(Path("out-1.0/qemu-aarch64"), Path("out/qemu-aarch64"))

Packages are compared by name (and feed, where one name comes from two feeds): added,
removed, upgraded or downgraded (the version changed; the order is the feed format's) and
rebuilt (same version, another file). Files are compared in each filesystem image both
builds have (initramfs, squashfs), read with fwgen's own readers: added, removed and changed
(content, type, mode, owner or link target) with sizes. Given manifests only, files are
compared by path and provenance from the manifest's file list. Images by size and hash;
licences where the manifests record them (package `license`), else said to be unrecorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .fetch.backends import get_backend
from .images.inspect import list_image
from .images.read import is_squashfs

MANIFEST_FILE = "manifest.json"
FILESYSTEM_OUTPUTS = ("initramfs", "squashfs")  # outputs holding the root's files as fwgen reads them


@dataclass(frozen=True)
class Side:
    """One build: its manifest, and its folder when a build folder was given."""

    manifest: dict
    folder: Path | None
    label: str


def load_side(path: Path) -> Side:
    """A build folder (holding manifest.json) or a manifest file."""
    manifest_path = path / MANIFEST_FILE if path.is_dir() else path
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no {MANIFEST_FILE}: give a build folder (out/<board>) or a manifest") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{manifest_path}:{e.lineno}:{e.colno}: not a JSON manifest: {e.msg}") from e
    if not isinstance(manifest, dict) or "inputs" not in manifest or "outputs" not in manifest:
        raise UserError(f"{manifest_path}: not an fwgen manifest (no inputs and outputs)")
    return Side(manifest, path if path.is_dir() else None, str(path))


def diff_builds(a: Path, b: Path) -> dict:
    """Every difference between build (or manifest) `a` and `b`, as a JSON-ready dict."""
    old, new = load_side(a), load_side(b)
    return {
        "a": old.label, "b": new.label,
        "packages": diff_packages(_packages(old), _packages(new)),
        "files": diff_files(old, new),
        "images": diff_images(old.manifest["outputs"], new.manifest["outputs"]),
        "licenses": diff_licenses(_packages(old), _packages(new)),
    }


def _packages(side: Side) -> list[dict]:
    inputs = side.manifest["inputs"]
    kernel = inputs.get("kernel", {})
    return [*inputs.get("packages", []), *([kernel] if "name" in kernel else [])]


def _keyed(packages: list[dict]) -> dict[tuple[str, str], dict]:
    names = [p["name"] for p in packages]
    # The feed is part of the key only for a name two feeds supply (Alpine's and OpenWrt's `common`).
    return {(p["name"], p["feed"] if names.count(p["name"]) > 1 else ""): p for p in packages}


def diff_packages(old: list[dict], new: list[dict]) -> dict:
    a, b = _keyed(old), _keyed(new)
    changed = []
    for key in sorted(a.keys() & b.keys()):
        x, y = a[key], b[key]
        if x["version"] == y["version"] and x["sha256"] == y["sha256"]:
            continue
        changed.append({"name": x["name"], "feed": y["feed"], "from": x["version"], "to": y["version"],
                        "change": _version_change(x, y)})
    return {
        "added": [_brief(b[k]) for k in sorted(b.keys() - a.keys())],
        "removed": [_brief(a[k]) for k in sorted(a.keys() - b.keys())],
        "changed": changed,
    }


def _brief(package: dict) -> dict:
    return {"name": package["name"], "version": package["version"], "feed": package["feed"]}


def _version_change(x: dict, y: dict) -> str:
    if x["version"] == y["version"]:
        return "rebuilt"
    try:
        order = get_backend(_format_of(y)).compare_versions(x["version"], y["version"])
    except UserError:
        return "changed"
    return "upgraded" if order < 0 else "downgraded"


def _format_of(package: dict) -> str:
    # The manifest names no format; the file name's suffix does (.deb, .apk, .ipk).
    return package.get("url", "").rsplit(".", 1)[-1]


def diff_files(old: Side, new: Side) -> dict:
    """Per filesystem image both builds hold, the files added, removed and changed; from the
    manifests' file lists when either side is a manifest only."""
    if old.folder is None or new.folder is None:
        return {"manifest": _diff_provenance(old.manifest.get("files", {}), new.manifest.get("files", {}))}
    result = {}
    for name in FILESYSTEM_OUTPUTS:
        a, b = old.manifest["outputs"].get(name), new.manifest["outputs"].get(name)
        if a is None or b is None:
            continue
        result[name] = _diff_rows(_image_rows(old.folder / a["file"]), _image_rows(new.folder / b["file"]))
    return result


def _image_rows(path: Path) -> dict[str, dict]:
    if not path.is_file():
        raise UserError(f"{path}: the manifest lists it but the build folder has no such file")
    if path.name.endswith(".squashfs") and not is_squashfs(path):
        raise UserError(f"{path}: not a squashfs image")
    return {row["path"]: row for row in list_image(path, digests=True)[1]}


def _diff_rows(a: dict[str, dict], b: dict[str, dict]) -> dict:
    compared = ("type", "mode", "uid", "gid", "target", "sha256", "rdev")
    changed = []
    for path in sorted(a.keys() & b.keys()):
        what = [k for k in compared if a[path].get(k) != b[path].get(k)]
        if what:
            changed.append({"path": path, "from_size": a[path]["size"], "to_size": b[path]["size"],
                            "what": ["content" if k == "sha256" else k for k in what]})
    return {
        "added": [{"path": p, "size": b[p]["size"], "type": b[p]["type"]} for p in sorted(b.keys() - a.keys())],
        "removed": [{"path": p, "size": a[p]["size"], "type": a[p]["type"]} for p in sorted(a.keys() - b.keys())],
        "changed": changed,
    }


def _diff_provenance(a: dict[str, str], b: dict[str, str]) -> dict:
    return {
        "added": [{"path": p, "from": b[p]} for p in sorted(b.keys() - a.keys())],
        "removed": [{"path": p, "from": a[p]} for p in sorted(a.keys() - b.keys())],
        "changed": [{"path": p, "what": ["provenance"], "from": a[p], "to": b[p]}
                    for p in sorted(a.keys() & b.keys()) if a[p] != b[p]],
    }


def diff_images(a: dict[str, dict], b: dict[str, dict]) -> list[dict]:
    rows = []
    for name in sorted(a.keys() | b.keys()):
        x, y = a.get(name), b.get(name)
        rows.append({"output": name, "file": (y or x or {}).get("file"),
                     "from_size": x["size"] if x else None, "to_size": y["size"] if y else None,
                     "same": bool(x and y and x["sha256"] == y["sha256"])})
    return rows


def diff_licenses(old: list[dict], new: list[dict]) -> dict | None:
    """Packages whose recorded licence changed; None when neither manifest records licences."""
    if not any("license" in p for p in [*old, *new]):
        return None
    a, b = _keyed(old), _keyed(new)
    return {"changed": [{"name": a[k]["name"], "from": a[k].get("license"), "to": b[k].get("license")}
                        for k in sorted(a.keys() & b.keys()) if a[k].get("license") != b[k].get("license")],
            "added": [{"name": b[k]["name"], "license": b[k].get("license")} for k in sorted(b.keys() - a.keys())]}


def format_diff(changes: dict) -> list[str]:
    """The diff as text lines for people."""
    lines = [f"--- {changes['a']}", f"+++ {changes['b']}"]
    packages = changes["packages"]
    lines.append(f"packages: {len(packages['added'])} added, {len(packages['removed'])} removed, "
                 f"{len(packages['changed'])} changed")
    lines += [f"  + {p['name']} {p['version']} ({p['feed']})" for p in packages["added"]]
    lines += [f"  - {p['name']} {p['version']} ({p['feed']})" for p in packages["removed"]]
    lines += [f"  ~ {p['name']} {p['from']} -> {p['to']} ({p['change']})" for p in packages["changed"]]
    for image, files in changes["files"].items():
        lines.append(f"files in {image}: {len(files['added'])} added, {len(files['removed'])} removed, "
                     f"{len(files['changed'])} changed")
        lines += [f"  + {f['path']}" + (f" ({f['size']:,} bytes)" if "size" in f else "") for f in files["added"]]
        lines += [f"  - {f['path']}" + (f" ({f['size']:,} bytes)" if "size" in f else "") for f in files["removed"]]
        lines += [f"  ~ {f['path']} ({', '.join(f['what'])}" +
                  (f"; {f['from_size']:,} -> {f['to_size']:,} bytes)" if "from_size" in f else ")")
                  for f in files["changed"]]
    lines.append("images:")
    for row in changes["images"]:
        sizes = " -> ".join("absent" if s is None else f"{s:,}" for s in (row["from_size"], row["to_size"]))
        lines.append(f"  {'=' if row['same'] else '~'} {row['output']:10} {row['file'] or '':24} {sizes} bytes")
    licenses = changes["licenses"]
    if licenses is None:
        lines.append("licences: not recorded in these manifests")
    else:
        lines.append(f"licences: {len(licenses['changed'])} changed")
        lines += [f"  ~ {c['name']}: {c['from']} -> {c['to']}" for c in licenses["changed"]]
        lines += [f"  + {c['name']}: {c['license']}" for c in licenses["added"]]
    return lines
