"""Package licences as SPDX expressions, and a deny list held against them.

What each package says about its licence: Debian's machine-readable copyright file (DEP-5,
https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/), Alpine's `L:` and
OpenWrt's `License:`. The names they use (DEP-5's `GPL-2+`, `Expat`, Alpine's `GPL2+`, OpenWrt's
`GPL-2.0 GPL-2.0+`) are normalised with license-expression's key database, which knows the
SPDX identifiers, their older spellings and ScanCode's keys. A name it does not know becomes a
`LicenseRef-` of its own. A package that says nothing fwgen can read gets NOASSERTION (SPDX's
"not stated") with the reason, which the build prints as a warning.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EXIT_CHECK_FAILED, FwgenError, UserError
from .fetch import Package, license_file_of
from .fetch.deb import parse_stanzas
from .rootfs import Entry, EntryType, RootFS

NOASSERTION = "NOASSERTION"
# BusyBox's LICENSE: "BusyBox is distributed under version 2 of the General Public License".
BUSYBOX_LICENSE = "GPL-2.0-only"

# Names packages use that are neither SPDX identifiers nor ScanCode keys.
_ALIASES = {
    "expat": "MIT",  # DEP-5 section 7: "Expat: The Expat license", the MIT licence's text
    # OpenWrt's toolchain label for libgcc and friends: GCC's runtime library exception.
    "gpl-3.0-with-gcc-exception": "GPL-3.0-or-later WITH GCC-exception-3.1",
}
# A version written the ways distributions do: GPL-2, GPL2+, GPLv3, LGPL-2.1+, GPL-2.0-only.
_VERSIONED = re.compile(r"(?P<base>[a-z][a-z-]*?)-?v?(?P<version>\d+(?:\.\d+)*)(?P<later>\+|-or-later)?(?:-only)?",
                        re.IGNORECASE)
_WITH_EXCEPTION = re.compile(r"\bwith\s+([\w.+-]+)\s+exception\b", re.IGNORECASE)
_TOKENS = re.compile(r"\(|\)|[^\s(),]+")


class LicenseDenied(FwgenError):
    """The image holds a package whose licence the caller denies: a failed check, exit 1."""

    exit_code = EXIT_CHECK_FAILED


@dataclass(frozen=True)
class License:
    """A package's licence: an SPDX expression (or NOASSERTION), where it was read, why it is
    NOASSERTION, and the text of each LicenseRef the package's own file gives."""

    expression: str
    source: str
    problem: str | None = None
    texts: dict[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        record = {"license": self.expression, "license_source": self.source}
        if self.problem:
            record["license_problem"] = self.problem
        return record


# -- normalising names ------------------------------------------------------------------------
@functools.cache
def _licensing():
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


@functools.cache
def _known_keys() -> tuple[dict[str, str], dict[str, str]]:
    """(licences, exceptions): every spelling the database knows, lower-cased, to its SPDX id.
    SPDX's own identifiers first, then their older spellings, then ScanCode's keys."""
    from license_expression import get_license_index

    index = get_license_index()
    tables: tuple[dict[str, str], dict[str, str]] = ({}, {})
    for spellings in (lambda e: [e["spdx_license_key"]], lambda e: e["other_spdx_license_keys"],
                      lambda e: [e["license_key"]]):
        for entry in index:
            if not entry["spdx_license_key"]:
                continue
            table = tables[1 if entry["is_exception"] else 0]
            for spelling in spellings(entry):
                table.setdefault(spelling.lower(), entry["spdx_license_key"])
    return tables


def spdx_id(name: str) -> str | None:
    """The SPDX identifier (or expression) for one licence name, None when unknown."""
    licences, _ = _known_keys()
    lower = name.lower()
    if lower in _ALIASES:
        return _ALIASES[lower]
    if lower in licences:
        return licences[lower]
    match = _VERSIONED.fullmatch(name)
    if match is None:
        return None
    base, version = match["base"].rstrip("-").lower(), match["version"]
    versions = [version] if "." in version else [version, version + ".0"]
    suffixes = ("-or-later", "+") if match["later"] else ("-only", "")
    for v in versions:
        for suffix in suffixes:
            if f"{base}-{v}{suffix}" in licences:
                return licences[f"{base}-{v}{suffix}"]
    return None


def license_ref(name: str) -> str:
    """SPDX's form for a licence with no identifier: LicenseRef-[idstring] (letters, digits, . -)."""
    return "LicenseRef-" + (re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") or "unnamed")


def normalize(text: str) -> tuple[str, dict[str, str]]:
    """An SPDX expression for a licence statement as packages write it, and the names behind
    each LicenseRef it made. `and`/`or` in any case, DEP-5's `, and` and `with X exception`,
    parentheses; names side by side with no operator (Alpine's `MIT BSD GPL2+`, OpenWrt's
    `GPL-2.0 GPL-2.0+`) all apply: AND. Empty text is NOASSERTION."""
    text = _WITH_EXCEPTION.sub(lambda m: f"WITH {m[1]}-exception", text.strip())
    tokens = _TOKENS.findall(text)
    if not tokens:
        return NOASSERTION, {}
    out: list[str] = []
    refs: dict[str, str] = {}
    for i, token in enumerate(tokens):
        word = token.upper()
        if word in ("AND", "OR", "WITH"):
            out.append(word)
            continue
        if token == ")":
            out.append(token)
            continue
        if out and out[-1] not in ("AND", "OR", "WITH", "("):
            out.append("AND")  # names side by side
        if token == "(":
            out.append(token)
        elif i and tokens[i - 1].upper() == "WITH":
            out.append(_exception_id(token) or token)
        else:
            out.append(_license_id(token, refs))
    return _render(" ".join(out), text), refs


def _license_id(name: str, refs: dict[str, str]) -> str:
    found = spdx_id(name)
    if found is not None:
        return f"({found})" if " " in found else found
    ref = license_ref(name)
    refs[ref] = name
    return ref


def _exception_id(name: str) -> str | None:
    _, exceptions = _known_keys()
    lower = name.lower()
    if lower in exceptions:
        return exceptions[lower]
    # `with Bison exception` names no version: the newest SPDX exception of that very name.
    stem = lower.removesuffix("-exception") + "-exception-"
    found = sorted({v for v in exceptions.values() if v.lower().startswith(stem)})
    return found[-1] if found else None


def _render(expression: str, original: str) -> str:
    """The expression as license-expression renders it, simplified (nested ANDs flattened,
    duplicates dropped, terms in a stable order)."""
    from license_expression import ExpressionError

    licensing = _licensing()
    try:
        return str(licensing.parse(expression, validate=False).simplify())
    except ExpressionError:
        # An operator out of place ("GPL and"): the whole statement is one unknown name.
        return license_ref(original)


# -- DEP-5 ------------------------------------------------------------------------------------
def read_dep5(text: str, where: str) -> License:
    """The licence of a package from its DEP-5 copyright file: every licence its Files
    paragraphs name (what the package's files are under), all of which apply. Paragraphs
    only for debian/* describe the packaging, which fwgen does not ship, and are left out.
    A copyright file that is not machine-readable says nothing fwgen can read: NOASSERTION."""
    paragraphs = list(parse_stanzas(text.replace("\r\n", "\n")))
    if not paragraphs or "copyright-format" not in paragraphs[0].get("Format", ""):
        return License(NOASSERTION, where, f"{where} is not machine-readable (no DEP-5 Format: line)")
    names: list[str] = []
    texts: dict[str, str] = {}
    for number, paragraph in enumerate(paragraphs):
        synopsis, _, body = paragraph.get("License", "").partition("\n")
        synopsis = synopsis.strip()
        if "Files" not in paragraph and number > 0:  # a stand-alone licence: its text
            if synopsis and body.strip():
                texts[synopsis.lower()] = body.strip()
            continue
        files = paragraph.get("Files", "").split()
        if files and all(f.startswith("debian/") for f in files):
            continue
        if synopsis and synopsis not in names:
            names.append(synopsis)
            if body.strip():
                texts.setdefault(synopsis.lower(), body.strip())
    if not names:
        return License(NOASSERTION, where, f"{where} names no licence for the package's files")
    expression, refs = normalize(" AND ".join(f"({name})" for name in names))
    return License(expression, where, texts={ref: texts.get(name.lower(), "") for ref, name in refs.items()})


# -- a package's licence ----------------------------------------------------------------------
def package_license(package: Package, read: Callable[[str], bytes | None]) -> License:
    """The licence `package` states: in its index (Alpine, OpenWrt), or in its copyright file
    (Debian), read through `read(path)` from the package's files."""
    if package.license:
        expression, _ = normalize(package.license)
        return License(expression, f"{package.format} index of feed {package.feed}: {package.license!r}")
    path = license_file_of(package)
    if path is None:
        return License(NOASSERTION, f"{package.format} index of feed {package.feed}", "the index states no licence")
    data = read(path)
    if data is None:
        return License(NOASSERTION, path.lstrip("/"), f"the package has no {path}")
    return read_dep5(data.decode("utf-8", "replace"), path.lstrip("/"))


def rootfs_reader(rootfs: RootFS) -> Callable[[str], bytes | None]:
    """A file's bytes by path, symlinks followed (a Debian doc folder may link to the one of
    another package of its source, as libgcc-s1's does to gcc-12-base's)."""
    def read(path: str) -> bytes | None:
        entry = rootfs.resolve(path)
        return entry.data if entry is not None and entry.type is EntryType.FILE else None
    return read


def entries_reader(entries: Iterable[Entry]) -> Callable[[str], bytes | None]:
    """As rootfs_reader, over the files of one package not installed (the kernel, U-Boot)."""
    rootfs = RootFS()
    for entry in entries:
        if entry.path.startswith("/usr/share/doc/"):
            rootfs.add(entry)
    return rootfs_reader(rootfs)


# -- deny lists -------------------------------------------------------------------------------
def parse_deny(items: Sequence[str]) -> list[str]:
    """The licences of a deny list (`GPL-3.0-only,AGPL-3.0-or-later`, Debian spellings too),
    as SPDX ids; a name nothing knows is refused rather than silently never matched."""
    denied: list[str] = []
    for item in (part.strip() for value in items for part in value.split(",")):
        if not item:
            continue
        found = spdx_id(item)
        if found is None and not item.startswith("LicenseRef-"):
            raise UserError(f"--deny {item}: not a licence fwgen knows",
                            "use SPDX identifiers, e.g. GPL-3.0-only, or the LicenseRef- fwgen licenses prints")
        if (found or item) not in denied:
            denied.append(found or item)
    return denied


def denied_by(expression: str, denied: Sequence[str]) -> list[str]:
    """The denied licences `expression` cannot do without: empty when some choice among its
    ORs avoids every denied licence. `A WITH B` is denied as `A WITH B` or as A."""
    if expression == NOASSERTION or not denied:
        return []
    licensing = _licensing()
    parsed = licensing.dnf(licensing.parse(expression, validate=False))
    choices = parsed.args if isinstance(parsed, licensing.OR) else [parsed]
    hits: list[str] = []
    for choice in choices:
        found = [d for d in denied if _mentions(choice, d)]
        if not found:
            return []
        hits += [d for d in found if d not in hits]
    return hits


def _mentions(choice, denied: str) -> bool:
    for symbol in _licensing().license_symbols(choice, unique=False, decompose=False):
        if str(symbol) == denied:
            return True
        inner = getattr(symbol, "license_symbol", None)
        if inner is not None and str(inner) == denied:
            return True
    return False


# -- a built board's licences -----------------------------------------------------------------
def build_licenses(outdir: Path) -> list[dict]:
    """What the build in `outdir` holds, one row per component: name, version, licence, where
    the licence was read (its manifest.json, as the build recorded it)."""
    path = outdir / "manifest.json"
    if not path.is_file():
        raise UserError(f"{outdir}: no build found", f"run 'fwgen build --board {outdir.name}' first")
    inputs = json.loads(path.read_text())["inputs"]
    rows = [_row("package", p, path) for p in inputs["packages"]]
    kernel = inputs["kernel"]
    rows.append(_row("kernel", kernel, path) if "name" in kernel else
                _row("kernel", dict(kernel, name="linux", version=kernel["release"],
                                    license_source=kernel["vendor_image"]), path))
    busybox = inputs["busybox"]
    if "license" in busybox:  # fwgen's own BusyBox
        rows.append({"component": "busybox", "name": "busybox", "version": busybox["version"],
                     "license": busybox["license"], "source": f"fwgen, built from {busybox['source']['url']}"})
    if "bootloader" in inputs:
        rows.append(_row("bootloader", inputs["bootloader"]["package"], path))
    return rows


def _row(component: str, record: dict, manifest: Path) -> dict:
    if "license" not in record:
        raise UserError(f"{manifest}: {record['name']}: no licence recorded (built by an older fwgen)",
                        "build the board again")
    return {"component": component, "name": record["name"], "version": record["version"],
            "license": record["license"], "source": record["license_source"]}


def check_denied(board: str, rows: Sequence[dict], denied: Sequence[str]) -> None:
    """LicenseDenied naming every package of `rows` that cannot do without a denied licence."""
    hits = [(row, found) for row in rows if (found := denied_by(row["license"], denied))]
    if hits:
        named = ", ".join(f"{row['name']} {row['version']} ({', '.join(found)})" for row, found in hits)
        raise LicenseDenied(f"{board}: {len(hits)} component(s) with a denied licence: {named}")
