"""Service overlays: a folder with `overlay.yaml` and a `files/` tree, layered onto the rootfs.

A board is its overlays in order (each after the overlays it depends on); a later overlay wins,
but two overlays supplying one path with different content is an error unless the later one
declares `replaces: true` for it. Besides files, overlay.yaml declares packages, variables with
defaults (a board overrides them), users and groups, supervised services, sysctl settings,
kernel modules and boot checks; see fwgen/schema/overlay.schema.json.

The file tree is read from the host without following symlinks: a symlink in an overlay becomes
a symlink in the image. Owners and modes come from overlay.yaml (a git checkout cannot carry
them); anything not listed is root-owned, 0755 if executable in the checkout, else 0644.
Files ending in `.tmpl` are rendered with the variables (`{{ name }}`) and lose the suffix.

Everything is planned before anything is written: `plan_layers` validates the whole stack and
returns the entries, `apply_layers` adds them to a RootFS.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .arch import Arch
from .board import Board, Build, Check, FileRule, Overlay, Service, User, Variable
from .document import (
    Document,
    Positions,
    apply_defaults,
    did_you_mean,
    display_path,
    format_keypath,
    load_schema,
    read_yaml,
    schema_regex,
    validate,
)
from .errors import ConfigError
from .guest import SERVICE_DIR, SERVICE_HELPER
from .rootfs import Entry, EntryType, RootFS

TEMPLATE_SUFFIX = ".tmpl"
# `{{ name }}`: the whole template language. Anything richer belongs in a script on the device.
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
ALL_PORTS = range(1, 65536)


def load_overlay(path: Path) -> tuple[Overlay, Document]:
    """Read and validate `<path>/overlay.yaml`: the Overlay (its checks not yet rendered) and
    the Document, which the board's loading needs for the checks and then drops."""
    doc = read_yaml(display_path(path / "overlay.yaml"))
    validate(doc, "overlay")
    check_checks(doc, forward=ALL_PORTS)  # the board's forwards are checked by render_overlay_checks
    data = apply_defaults(doc.data, load_schema("overlay"))
    overlay = Overlay(
        name=path.name, path=path, positions=doc.positions(),
        description=data["description"].strip(),
        depends=tuple(data["depends"]),
        packages=tuple(data["packages"]),
        variables={name: _variable(spec) for name, spec in data["variables"].items()},
        files={image_path: _file_rule(rule) for image_path, rule in data["files"].items()},
        users={name: _user(spec) for name, spec in data["users"].items()},
        groups={name: spec["gid"] for name, spec in data["groups"].items()},
        services={name: _service(spec) for name, spec in data["services"].items()},
        sysctl={key: variable_text(value).strip() for key, value in data["sysctl"].items()},
        modules=tuple(data["modules"]),
        busybox_config=tuple(_overlay_file(doc, path, ("busybox_config", i), name)
                             for i, name in enumerate(data["busybox_config"])),
        builds=tuple(_build(doc, path, name, spec) for name, spec in data["builds"].items()),
    )
    for image_path in overlay.files:
        if ".." in image_path.split("/"):
            raise overlay.error(("files", image_path), f"'{image_path}' escapes the image root", at_key=True)
    return overlay, doc


def _variable(spec: dict) -> Variable:
    default = spec.get("default")
    return Variable(default=tuple(default) if isinstance(default, list) else default,
                    description=spec.get("description", ""))


def _file_rule(rule: dict) -> FileRule:
    mode = int(rule["mode"], 8) if "mode" in rule else None
    return FileRule(mode=mode, owner=rule.get("owner"), group=rule.get("group"), replaces=rule.get("replaces", False))


def _user(spec: dict) -> User:
    groups = spec.get("groups")
    return User(**dict(spec, groups=tuple(groups) if groups is not None else None))


def _service(spec: dict) -> Service:
    return Service(**dict(spec, depends=tuple(spec.get("depends", ()))))


def _build(doc: Document, folder: Path, name: str, spec: dict) -> Build:
    """One entry of `builds:`, its files resolved inside the overlay folder."""
    keypath = ("builds", name)
    source = spec["source"]
    if ("folder" in source) == ("urls" in source or "sha256" in source):
        raise doc.error((*keypath, "source"), "give either folder, or urls with sha256")
    if "folder" not in source and not ("urls" in source and "sha256" in source):
        raise doc.error((*keypath, "source"), "a tarball needs both urls and sha256")
    if spec.get("system", "make") == "cc" and not (spec.get("sources", ()) and spec.get("program")):
        raise doc.error(keypath, "system cc needs sources (the C files) and program (its name)")
    source_folder = None
    if "folder" in source:
        source_folder = _overlay_path(doc, folder, (*keypath, "source", "folder"), source["folder"])
        if not source_folder.is_dir():
            raise doc.error((*keypath, "source", "folder"), f"{source['folder']} is not a folder in the overlay")
    for image_path, built in spec["install"].items():
        if built.startswith("/") or ".." in built.split("/"):
            raise doc.error((*keypath, "install", image_path), f"'{built}' is not a path inside the build's source folder")
    return Build(
        name=name, overlay=folder.name, keypath=keypath, folder=source_folder,
        urls=tuple(source.get("urls", ())), sha256=source.get("sha256"),
        patches=tuple(_overlay_file(doc, folder, (*keypath, "patches", i), p) for i, p in enumerate(spec.get("patches", ()))),
        system=spec.get("system", "make"), configure_args=tuple(spec.get("configure_args", ())), make_args=tuple(spec.get("make_args", ())),
        sources=tuple(spec.get("sources", ())), program=spec.get("program"), static=spec.get("static", True),
        install=dict(spec["install"]), links=dict(spec.get("links", {})),
    )


def _overlay_path(doc: Document, folder: Path, keypath: tuple, name: str) -> Path:
    resolved = (folder / name).resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise doc.error(keypath, f"'{name}' escapes the overlay folder")
    return resolved


def _overlay_file(doc: Document, folder: Path, keypath: tuple, name: str) -> Path:
    """A file the overlay names, which must lie inside the overlay folder."""
    resolved = _overlay_path(doc, folder, keypath, name)
    if not resolved.is_file():
        raise doc.error(keypath, f"{name} not found", f"looked for {resolved}")
    return resolved


def resolve_overlays(folders: Sequence[str | Path], available: Mapping[str, Path]) -> list[tuple[Overlay, Document]]:
    """The overlays in application order, each after the overlays it depends on, each read
    once (see load_overlay).

    `folders` are the board's overlays as config resolved them; dependencies in overlay.yaml
    are names looked up in `available` (config.find_overlays).
    """
    ordered: list[tuple[Overlay, Document]] = []
    done: set[Path] = set()

    def visit(folder: Path, chain: tuple[str, ...]) -> None:
        if folder in done:
            return
        if folder.name in chain:
            raise ConfigError("overlay dependency cycle: " + " -> ".join((*chain, folder.name)),
                              file=str(folder / "overlay.yaml"), keypath="depends")
        overlay, doc = load_overlay(folder)
        for i, name in enumerate(overlay.depends):
            if name not in available:
                raise overlay.error(("depends", i), f"depends on unknown overlay '{name}'",
                                    did_you_mean(name, list(available), "overlays"))
            visit(available[name], (*chain, folder.name))
        done.add(folder)
        ordered.append((overlay, doc))

    for folder in folders:
        visit(Path(folder), ())
    return ordered


def render_overlay_checks(doc: Document, variables: Mapping[str, str], forward: Sequence[int]) -> tuple[Check, ...]:
    """An overlay's checks (its overlay.yaml's Document) rendered with the board's variables;
    every port they reach must be one the board forwards."""
    schema = load_schema("overlay")
    items = apply_defaults(doc.data.get("checks", []), schema["properties"]["checks"], schema)
    checks = render_checks(doc, items, variables)
    for index, check in enumerate(checks):
        if check.port is not None and check.port not in forward:
            key = "tcp" if check.kind == "tcp" else "port"
            raise doc.error(("checks", index, key), f"port {check.port} is not forwarded",
                            "add it to the board's qemu.forward")
    return tuple(checks)


def render_checks(doc: Document, items: Sequence[dict], variables: Mapping[str, str]) -> list[Check]:
    """The `checks:` items of a board or overlay file (a config.Document) with every string
    rendered; an overlay's port may be a variable (`port: "{{ httpd_port }}"`)."""
    checks = []
    for index, item in enumerate(items):
        rendered = {key: render_at(doc, ("checks", index, key), variables) if isinstance(value, str) else value
                    for key, value in item.items()}
        for key in ("port", "tcp"):
            if isinstance(rendered.get(key), str):
                rendered[key] = _port_number(doc, ("checks", index, key), rendered[key])
        checks.append(build_check(rendered))
    return checks


def _port_number(doc: Any, keypath: tuple, text: str) -> int:
    if not text.strip().isdigit() or int(text) not in ALL_PORTS:
        raise doc.error(keypath, f"'{text}' is not a TCP port (1-65535) once its variables are filled in")
    return int(text)


# ---------------------------------------------------------------------------------------------
# Checks, from a board's or an overlay's `checks:` items

CHECK_KINDS = ("run", "http", "console", "tcp", "service", "persist")
# Which optional keys each check kind understands (besides name and timeout).
CHECK_OPTIONS = {
    "run": ("expect", "contains", "exit"),
    "http": ("port", "status", "contains"),
    "console": (),
    "tcp": ("banner",),
    "service": (),
    "persist": (),
}



def check_checks(doc: Document, forward: Sequence[int] | None = None) -> None:
    """Each check has exactly one kind and only the keys that kind understands, and every
    port it reaches is in `forward` (the board's qemu.forward when None)."""
    if forward is None:
        forward = (doc.data.get("qemu") or {}).get("forward", [])
    for i, item in enumerate(doc.data.get("checks", [])):
        kinds = [k for k in CHECK_KINDS if k in item]
        if len(kinds) != 1:
            found = " and ".join(kinds) if kinds else "none"
            raise doc.error(("checks", i), f"a check needs exactly one of {', '.join(CHECK_KINDS)} (found {found})",
                            "split it into one check per kind" if kinds else None)
        kind = kinds[0]
        allowed = {kind, "name", "timeout", *CHECK_OPTIONS[kind]}
        for key in item:
            if key not in allowed:
                raise doc.error(("checks", i, key), f"'{key}' does not apply to a {kind} check",
                                f"{kind} checks take: " + ", ".join(sorted(allowed - {kind})), at_key=True)
        if kind == "http" and "port" not in item:
            raise doc.error(("checks", i), "http check needs 'port'",
                            "the guest TCP port, one of qemu.forward")
        _check_forwarded(doc, i, item, forward)


def _check_forwarded(doc: Document, index: int, item: dict, forward: Sequence[int]) -> None:
    key = "tcp" if "tcp" in item else "port"
    if not isinstance(item.get(key), int):
        return  # none, or an overlay's "{{ variable }}": checked once rendered (render_overlay_checks)
    if item[key] not in forward:
        raise doc.error(("checks", index, key), f"port {item[key]} is not forwarded",
                        "add it to the board's qemu.forward")


def build_check(item: dict) -> Check:
    """A Check from one validated `checks:` item (defaults applied)."""
    kind = next(k for k in CHECK_KINDS if k in item)
    argument = item[kind]
    default_name = f"{kind}: {argument}" + (f" (port {item['port']})" if kind == "http" else "")
    return Check(
        kind=kind,
        name=item.get("name", default_name),
        command=argument if kind == "run" else None,
        path=argument if kind in ("http", "persist") else None,
        port=argument if kind == "tcp" else item.get("port"),
        service=argument if kind == "service" else None,
        banner=item.get("banner"),
        expect=item.get("expect"),
        contains=argument if kind == "console" else item.get("contains"),
        status=item["status"],
        exit=item["exit"],
        timeout=float(item["timeout"]),
    )


# ---------------------------------------------------------------------------------------------
# Variables and templates


def builtin_variables(board: Board) -> dict[str, str]:
    """The variables every template may use, whatever the overlays declare."""
    return {"hostname": board.hostname, "board": board.name, "arch": board.arch.value,
            "fwgen_version": __version__}


def variable_text(value: Any) -> str:
    """How a YAML value reads in a template: lists one item per line, booleans lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def resolve_variables(board: Board, overlays: Sequence[Overlay], board_doc: Document) -> dict[str, str]:
    """Built-ins, then the overlays' defaults, then the board's values (later wins), each with
    the variables it uses filled in (`url: "http://{{ hostname }}:{{ port }}"`).

    A variable declared without a default and not set by the board stays undefined: using it
    is an error that names the template and the variable; so is a cycle of references.
    """
    sources: dict[str, tuple[str, _Place | None]] = {name: (text, None) for name, text in builtin_variables(board).items()}
    for overlay in overlays:
        for name, variable in overlay.variables.items():
            if variable.default is not None:
                sources[name] = (variable_text(variable.default),
                                 (overlay.positions, ("variables", name, "default"), variable.default))
    sources.update({name: (text, (board_doc, ("variables", name), board_doc.data["variables"][name]))
                    for name, text in board.variables.items()})
    resolver = _Resolver(sources)
    return {name: resolver[name] for name in sources}


# Where a variable's value was written: the file's positions, its key path and the value as written.
_Place = tuple[Positions, tuple, Any]


class _Resolver(Mapping[str, str]):
    """Variables whose values may use other variables: each value is rendered once, on first
    use, from its own text (a value never renders the text another value brought in)."""

    def __init__(self, sources: Mapping[str, tuple[str, _Place | None]]) -> None:
        self.sources = sources
        self.done: dict[str, str] = {}
        self.chain: list[str] = []

    def __contains__(self, name: object) -> bool:
        return name in self.sources

    def __iter__(self):
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, name: str) -> str:
        if name in self.done:
            return self.done[name]
        text, place = self.sources[name]
        if name in self.chain:
            cycle = " -> ".join([*self.chain[self.chain.index(name):], name])
            cause = self.sources[self.chain[-1]][1]
            assert cause is not None  # only written values refer to others
            positions, keypath, _ = cause
            raise positions.error(keypath, f"variables refer to each other in a cycle: {cycle}")
        if place is not None and PLACEHOLDER.search(text):
            self.chain.append(name)
            text = render_value(place[0], place[1], place[2], self)
            self.chain.pop()
        self.done[name] = text
        return text


def declared_variables(overlays: Sequence[Overlay]) -> set[str]:
    names = {"hostname", "board", "arch", "fwgen_version"}
    for overlay in overlays:
        names.update(overlay.variables)
    return names


def render(text: str, variables: Mapping[str, str], *, file: str, line: int = 1, column: int = 1,
           keypath: str | None = None) -> str:
    """Replace every `{{ name }}` in `text`; an undefined name is a ConfigError at its place.

    `line` and `column` say where `text` starts in `file` (a value inside overlay.yaml).
    """
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return variables[name]
        before = text[:match.start()]
        at_line = line + before.count("\n")
        at_column = (column if "\n" not in before else 1) + len(before.rsplit("\n", 1)[-1])
        raise ConfigError(f"undefined variable '{name}'", file=file, line=at_line, column=at_column,
                          keypath=keypath, hint="set it under the board's variables: or give it a "
                          "default in the overlay's variables:")

    return PLACEHOLDER.sub(substitute, text)


def render_at(doc: Document, keypath: tuple, variables: Mapping[str, str]) -> str:
    """The value at `keypath` of a loaded file, rendered (see render_value)."""
    value = doc.data
    for part in keypath:
        value = value[part]
    return render_value(doc, keypath, value, variables)


def render_value(positions: Positions, keypath: tuple, value: Any, variables: Mapping[str, str]) -> str:
    """`value`, found at `keypath` of a loaded file, rendered; an undefined variable is an
    error at its place in that file."""
    line, column = positions.position(keypath)
    text = variable_text(value)
    # A block scalar (`|`) starts on the line after its indicator.
    if isinstance(value, str) and "\n" in value:
        line, column = line + 1, 1
    return render(text, variables, file=positions.file_of(keypath), line=line, column=column,
                  keypath=format_keypath(keypath))


# ---------------------------------------------------------------------------------------------
# Accounts


@dataclass
class Accounts:
    """Users and groups merged from every overlay, in declaration order."""

    users: dict[str, dict] = field(default_factory=dict)  # name -> merged settings
    groups: dict[str, int] = field(default_factory=dict)  # name -> gid
    origin: dict[str, Overlay] = field(default_factory=dict)  # user -> overlay that declared it

    def uid(self, name: str) -> int:
        return self.users[name]["uid"]

    def gid(self, user: str) -> int:
        return self.groups[self.users[user]["group"]]


def collect_accounts(overlays: Sequence[Overlay]) -> Accounts:
    """Merge users and groups: a later overlay may add settings to a user, never change them."""
    accounts = Accounts()
    for overlay in overlays:
        for name, gid in overlay.groups.items():
            if accounts.groups.get(name, gid) != gid:
                raise overlay.error(("groups", name, "gid"), f"group '{name}' already has gid "
                                    f"{accounts.groups[name]}")
            accounts.groups[name] = gid
        for name, declared_user in overlay.users.items():
            _merge_user(accounts, overlay, name, declared_user.declared())
    for name, declared in accounts.users.items():
        home = "/root" if name == "root" else f"/home/{name}"
        user = accounts.users[name] = {"group": name, "home": home, "shell": "/bin/false", "gecos": name} | declared
        overlay = accounts.origin[name]
        if user["group"] not in accounts.groups:
            if "group" in declared:
                raise overlay.error(("users", name, "group"), f"unknown group '{user['group']}'",
                                    "declare it under groups:")
            accounts.groups[user["group"]] = user["uid"]
        for i, group in enumerate(user.get("groups", [])):
            if group not in accounts.groups:
                raise overlay.error(("users", name, "groups", i), f"unknown group '{group}'")
    return accounts


def _merge_user(accounts: Accounts, overlay: Overlay, name: str, spec: dict) -> None:
    if name not in accounts.users:
        if "uid" not in spec:
            raise overlay.error(("users", name), f"user '{name}' needs a uid",
                                "only a later overlay adding keys to an existing user may omit it")
        accounts.users[name] = {}
        accounts.origin[name] = overlay
    declared = accounts.users[name]
    for key, value in spec.items():
        if key in declared and declared[key] != value:
            raise overlay.error(("users", name, key), f"user '{name}' already has {key} {declared[key]!r} "
                                f"from overlay '{accounts.origin[name].name}'")
        declared[key] = value
    if "authorized_keys_file" in spec:
        declared["authorized_keys_file"] = _inside(overlay, ("users", name, "authorized_keys_file"),
                                                   spec["authorized_keys_file"])
    if "authorized_keys" in spec or "authorized_keys_file" in spec:
        declared["_keys_overlay"] = overlay


def _inside(overlay: Overlay, keypath: tuple, relative: str) -> Path:
    """A file named in overlay.yaml, which must lie inside the overlay folder (symlinks followed)."""
    path = (overlay.path / relative).resolve()
    if not path.is_relative_to(overlay.path.resolve()):
        raise overlay.error(keypath, f"'{relative}' escapes the overlay folder")
    if not path.is_file():
        raise overlay.error(keypath, f"'{relative}' not found", f"looked for {path}")
    return path


def account_files(accounts: Accounts) -> dict[str, bytes]:
    """/etc/passwd, /etc/group and /etc/shadow. No password is ever in clear: a hash or '!'."""
    passwd, shadow = [], []
    for name, user in sorted(accounts.users.items(), key=lambda item: item[1]["uid"]):
        gid = accounts.groups[user["group"]]
        passwd.append(f"{name}:x:{user['uid']}:{gid}:{user['gecos']}:{user['home']}:{user['shell']}")
        # '!' locks the account: no password matches it (shadow(5)); key logins still work.
        shadow.append(f"{name}:{user.get('password_hash', '!')}:0:0:99999:7:::")
    members: dict[str, list[str]] = {}
    for name, user in accounts.users.items():
        for group in user.get("groups", []):
            members.setdefault(group, []).append(name)
    group = [f"{name}:x:{gid}:{','.join(members.get(name, []))}"
             for name, gid in sorted(accounts.groups.items(), key=lambda item: item[1])]
    return {"/etc/passwd": _lines(passwd), "/etc/group": _lines(group), "/etc/shadow": _lines(shadow)}


def _lines(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# Planning the layers


@dataclass
class Layers:
    """Everything the overlays add to an image, validated: entries with their layer, the
    packages and boot modules they ask for, and their checks."""

    entries: dict[str, Entry] = field(default_factory=dict)
    rules: list[tuple[Overlay, str, FileRule]] = field(default_factory=list)  # files: rules for other paths
    packages: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    busybox_config: list[Path] = field(default_factory=list)
    builds: list[Build] = field(default_factory=list)  # compiled for the board (fwgen.compile)
    checks: list[Check] = field(default_factory=list)
    accounts: Accounts = field(default_factory=Accounts)


def plan_layers(overlays: Sequence[Overlay], variables: Mapping[str, str], arch: Arch | None = None) -> Layers:
    """Validate the whole overlay stack and compute what it adds; nothing is written. With the
    board's `arch`, its `files-<arch>/` folders are added and every ELF program is checked
    against it."""
    layers = Layers(accounts=collect_accounts(overlays))
    for overlay in overlays:
        _add_tree(layers, overlay, variables, arch)
        layers.packages += [p for p in overlay.packages if p not in layers.packages]
        layers.modules += [m for m in overlay.modules if m not in layers.modules]
        layers.busybox_config += [f for f in overlay.busybox_config if f not in layers.busybox_config]
        layers.checks += overlay.checks
        layers.builds += overlay.builds
        if overlay.sysctl:
            _add_generated(layers, f"/etc/sysctl.d/50-{overlay.name}.conf", _sysctl_file(overlay), overlay)
    for path, data in account_files(layers.accounts).items():
        _add_generated(layers, path, data, None, mode=0o600 if path == "/etc/shadow" else 0o644)
    _add_homes(layers, variables)
    _add_services(layers, overlays, variables)
    _check_built_paths(layers, overlays)
    return layers


def _check_built_paths(layers: Layers, overlays: Sequence[Overlay]) -> None:
    """A path a build installs is no overlay's file, and no other build's."""
    owner: dict[str, Build] = {}
    by_name = {o.name: o for o in overlays}
    for build in layers.builds:
        for path in (*build.install, *build.links):
            kind = "install" if path in build.install else "links"
            overlay = by_name[build.overlay]
            if path in layers.entries:
                raise overlay.error((*build.keypath, kind, path), f"'{path}' is also a file of the overlays "
                                    f"({layers.entries[path].provenance})", at_key=True)
            if path in owner:
                raise overlay.error((*build.keypath, kind, path), f"'{path}' is also installed by build "
                                    f"{owner[path].overlay}/{owner[path].name}", at_key=True)
            owner[path] = build


def apply_layers(rootfs: RootFS, layers: Layers) -> None:
    """Add the planned entries (later layers already won), then the owner and mode rules
    for paths the overlays did not supply themselves (a package's folder, a generated one)."""
    for planned in layers.entries.values():
        rootfs.add(planned)
    for overlay, path, rule in layers.rules:
        entry = rootfs.get(path)
        if entry is None:
            raise overlay.error(("files", path), f"'{path}' is in no layer of the image", at_key=True)
        rootfs.add(_with_rule(entry, rule, overlay, path, layers.accounts))


ARCH_FILES_PREFIX = "files-"  # files-aarch64/: files for the boards of one architecture only


def _add_tree(layers: Layers, overlay: Overlay, variables: Mapping[str, str], arch: Arch | None) -> None:
    supplied = set()
    for top in _file_trees(overlay, arch):
        for host, image_path in _walk(top):
            entry = _entry_from_host(host, image_path, overlay, variables)
            if arch is not None:
                _check_elf_arch(entry, host, arch)
            rule = overlay.files.get(entry.path)
            if rule is not None:
                entry = _with_rule(entry, rule, overlay, entry.path, layers.accounts)
            # An architecture's file stands in for the overlay's own generic one of that path.
            own = entry.path in supplied and top.name != "files"
            _place(layers, entry, overlay, host, replaces=bool(rule and rule.replaces) or own)
            supplied.add(entry.path)
    for path, rule in overlay.files.items():
        if path not in supplied:
            _with_rule(Entry(path, EntryType.FILE, 0o644), rule, overlay, path, layers.accounts)  # validate now
            layers.rules.append((overlay, path, rule))


def _file_trees(overlay: Overlay, arch: Arch | None) -> list[Path]:
    """`files/`, then `files-<arch>/` for the board's architecture; the other architectures'
    folders are left out, and a `files-*` folder naming no architecture is a mistake."""
    known = [a.value for a in Arch]
    for folder in sorted(overlay.path.glob(f"{ARCH_FILES_PREFIX}*")):
        name = folder.name.removeprefix(ARCH_FILES_PREFIX)
        if folder.is_dir() and name not in known:
            raise ConfigError(f"{folder.name}/ names no architecture fwgen knows", file=str(display_path(folder)),
                              hint=did_you_mean(name, known, "architectures") or f"known: {', '.join(known)}")
    trees = [overlay.path / "files"]
    if arch is not None:
        trees.append(overlay.path / f"{ARCH_FILES_PREFIX}{arch.value}")
    return [top for top in trees if top.is_dir()]


def _check_elf_arch(entry: Entry, host: Path, arch: Arch) -> None:
    """Refuse, before anything is fetched or compiled, an overlay's program built for another
    architecture (the ELF header's class, byte order and machine): the audit at the end would
    find it too, after minutes of work."""
    header = entry.data[:20] if entry.type is EntryType.FILE and entry.data else b""
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[5] not in (1, 2):
        return
    endian: Literal["little", "big"] = "little" if header[5] == 1 else "big"
    found = (int.from_bytes(header[18:20], endian), 32 if header[4] == 1 else 64, endian)
    if found == (arch.elf_machine, arch.elf_class, arch.endian):
        return
    matching = [a.value for a in Arch if (a.elf_machine, a.elf_class, a.endian) == found]
    what = "/".join(matching) if matching else f"machine {found[0]}, {found[1]}-bit {endian}-endian"
    raise ConfigError(f"an ELF program for {what}, but the board is {arch.value}", file=str(display_path(host)),
                      hint=f"put it in {ARCH_FILES_PREFIX}{matching[0] if matching else '<arch>'}/ of the overlay: "
                           "files/ is for every architecture")


def _walk(top: Path) -> Iterable[tuple[Path, str]]:
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            host = Path(dirpath) / name
            yield host, "/" + host.relative_to(top).as_posix()


def _entry_from_host(host: Path, image_path: str, overlay: Overlay, variables: Mapping[str, str]) -> Entry:
    st = os.lstat(host)
    provenance = f"overlay:{overlay.name}"
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(host)
        # An absolute target is a path in the image; a relative one must stay inside the tree.
        inside = posixpath.normpath(posixpath.join(posixpath.dirname(image_path).lstrip("/"), target))
        if not target.startswith("/") and (inside == ".." or inside.startswith("../")):
            raise ConfigError(f"symlink to '{target}' points outside the overlay", file=str(display_path(host)))
        return Entry(image_path, EntryType.SYMLINK, 0o777, target=target, provenance=provenance)
    if stat.S_ISDIR(st.st_mode):
        return Entry(image_path, EntryType.DIR, 0o755, provenance=provenance)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("only files, folders and symlinks may live in an overlay", file=str(display_path(host)))
    mode = 0o755 if st.st_mode & 0o111 else 0o644
    data = host.read_bytes()
    if image_path.endswith(TEMPLATE_SUFFIX):
        image_path = image_path.removesuffix(TEMPLATE_SUFFIX)
        data = render(data.decode(), variables, file=str(display_path(host))).encode()
    return Entry(image_path, EntryType.FILE, mode, data=data, provenance=provenance)


def _with_rule(entry: Entry, rule: FileRule, overlay: Overlay, path: str, accounts: Accounts) -> Entry:
    uid, gid = entry.uid, entry.gid
    if rule.owner is not None:
        if rule.owner not in accounts.users:
            raise overlay.error(("files", path, "owner"), f"owner '{rule.owner}' names no user",
                                "declare it under users: in this or an earlier overlay")
        uid, gid = accounts.uid(rule.owner), accounts.gid(rule.owner)
    if rule.group is not None:
        if rule.group not in accounts.groups:
            raise overlay.error(("files", path, "group"), f"group '{rule.group}' names no group")
        gid = accounts.groups[rule.group]
    mode = rule.mode if rule.mode is not None else entry.mode
    return Entry(entry.path, entry.type, mode, uid, gid, entry.mtime, entry.data, entry.target, entry.rdev,
                 entry.provenance)


def _place(layers: Layers, entry: Entry, overlay: Overlay, host: Path | None, *, replaces: bool) -> None:
    earlier = layers.entries.get(entry.path)
    if earlier is not None and earlier.type is EntryType.DIR and entry == _like(entry, earlier):
        return  # the same folder again: it stays with the layer that first supplied it
    if earlier is not None and not replaces and not _same(earlier, entry):
        where = str(display_path(host)) if host else overlay.meta_file
        raise ConfigError(
            f"{entry.path} is also supplied by {earlier.provenance} with different content",
            file=where, line=1 if host and entry.type is EntryType.FILE else None,
            hint=f"declare `files: {{{entry.path}: {{replaces: true}}}}` in {overlay.meta_file} "
                 "if this overlay means to replace it")
    layers.entries[entry.path] = entry


def _like(entry: Entry, earlier: Entry) -> Entry:
    return Entry(entry.path, earlier.type, earlier.mode, earlier.uid, earlier.gid, entry.mtime, entry.data,
                 entry.target, entry.rdev, entry.provenance)


def _same(a: Entry, b: Entry) -> bool:
    if a.type is EntryType.DIR and b.type is EntryType.DIR:
        return True  # folders merge; the later one's owner and mode win
    return (a.type, a.data, a.target, a.mode, a.uid, a.gid) == (b.type, b.data, b.target, b.mode, b.uid, b.gid)


def _add_generated(layers: Layers, path: str, data: bytes, overlay: Overlay | None, *, mode: int = 0o644,
                   uid: int = 0, gid: int = 0) -> None:
    provenance = f"overlay:{overlay.name}" if overlay else "fwgen:accounts"
    entry = Entry(path, EntryType.FILE, mode, uid, gid, data=data, provenance=provenance)
    _place(layers, entry, overlay or _NO_OVERLAY, None, replaces=False)


def _sysctl_file(overlay: Overlay) -> bytes:
    lines = [f"# sysctl settings of overlay {overlay.name} (applied by /etc/init.d/rcS)"]
    lines += [f"{key} = {value}" for key, value in overlay.sysctl.items()]
    return _lines(lines)


def _add_homes(layers: Layers, variables: Mapping[str, str]) -> None:
    """Home folders of users with SSH keys, and their ~/.ssh/authorized_keys (0600, theirs)."""
    accounts = layers.accounts
    for name, user in accounts.users.items():
        overlay = user.get("_keys_overlay")
        if overlay is None:
            continue
        if "authorized_keys_file" in user:
            keys = user["authorized_keys_file"].read_text()
        else:
            keys = render_value(overlay.positions, ("users", name, "authorized_keys"), user["authorized_keys"],
                                variables)
        uid, gid = accounts.uid(name), accounts.gid(name)
        provenance = f"overlay:{overlay.name}"
        home = user["home"]
        for path, mode in ((home, 0o700), (f"{home}/.ssh", 0o700)):
            layers.entries[path] = Entry(path, EntryType.DIR, mode, uid, gid, provenance=provenance)
        text = "".join(line.strip() + "\n" for line in keys.splitlines() if line.strip())
        layers.entries[f"{home}/.ssh/authorized_keys"] = Entry(
            f"{home}/.ssh/authorized_keys", EntryType.FILE, 0o600, uid, gid, data=text.encode(),
            provenance=provenance)


# ---------------------------------------------------------------------------------------------
# Services


def _add_services(layers: Layers, overlays: Sequence[Overlay], variables: Mapping[str, str]) -> None:
    """/etc/service/<name>/run and log/run for every service: the run script waits for the
    services it depends on, runs `setup`, then execs the daemon as its user; the log script
    hands the daemon's output to syslog under the service's name."""
    owners: dict[str, Overlay] = {}
    for overlay in overlays:
        for name in overlay.services:
            if name in owners:
                raise overlay.error(("services", name), f"service '{name}' is already declared by "
                                    f"overlay '{owners[name].name}'", at_key=True)
            owners[name] = overlay
    for name, overlay in owners.items():
        service = overlay.services[name]
        for i, dependency in enumerate(service.depends):
            if dependency not in owners:
                raise overlay.error(("services", name, "depends", i), f"unknown service '{dependency}'")
        if service.user not in layers.accounts.users:
            raise overlay.error(("services", name, "user"), f"user '{service.user}' names no user",
                                "declare it under users:")
        command = render_value(overlay.positions, ("services", name, "command"), service.command, variables)
        _check_one_line(overlay, ("services", name, "command"), command)
        setup = ("" if service.setup is None
                 else render_value(overlay.positions, ("services", name, "setup"), service.setup, variables))
        folder = f"{SERVICE_DIR}/{name}"
        _add_generated(layers, f"{folder}/run", _run_script(name, overlay, service, command, setup), overlay, mode=0o755)
        log = f"#!/bin/sh\n# The output of service {name} goes to syslog, tagged with its name.\nexec logger -t {name}\n"
        _add_generated(layers, f"{folder}/log/run", log.encode(), overlay, mode=0o755)


def _check_one_line(overlay: Overlay, keypath: tuple, text: str) -> None:
    """The schema checked the value as written; a variable may still bring a line break."""
    rule = load_schema("overlay")["$defs"]["one_line"]
    if not schema_regex(rule["pattern"]).search(text):
        raise overlay.error(keypath, f"{text!r} is not {rule['x-pattern-help']} once its variables are filled in")


def _run_script(name: str, overlay: Overlay, service: Service, command: str, setup: str) -> bytes:
    lines = ["#!/bin/sh",
             f"# Service {name} from overlay {overlay.name}, written by fwgen; supervised by runsv",
             "# (or fwgen-service without runit), which starts it again whenever it exits.",
             "exec 2>&1"]
    if service.depends:
        lines.append(f"{SERVICE_HELPER} need {' '.join(service.depends)} || exit 1")
    if setup.strip():
        lines.append(setup.rstrip())
    runner = "exec" if service.user == "root" else f"exec {SERVICE_HELPER} as {service.user}"
    lines.append(f"{runner} {command.strip()}")
    return _lines(lines)


class _Nobody:
    """Stands in for an overlay when fwgen itself generates a file (accounts)."""

    name = "fwgen"
    meta_file = "overlay.yaml"


_NO_OVERLAY: Any = _Nobody()


# ---------------------------------------------------------------------------------------------
# Listing and scaffolding


def list_layer_files(layers: Layers) -> list[tuple[str, str, str, str]]:
    """(path, type, mode, layer) of every planned path, sorted: `fwgen show --files`."""
    return [(e.path, e.type.value, f"{e.mode:04o}", e.provenance)
            for e in sorted(layers.entries.values(), key=lambda e: e.path)]


SCAFFOLD = '''\
# Overlay {name}: what it adds to a board (see docs/vendors.md and
# fwgen/schema/overlay.schema.json for every key). Use it from a board file:
#   overlays: [base, network, {name}]
description: {name} service
# Overlays applied before this one.
depends: [base]
# Packages from the board's feeds (with their dependencies).
packages: []
# Variables for templates (files ending in .tmpl) and service commands: {{{{ name }}}}.
# Built in: hostname, board, arch, fwgen_version. Boards override under `variables:`.
variables:
  {var}_port:
    default: "8080"
    description: TCP port the {name} service listens on
# Owners and modes a git checkout cannot carry; `replaces: true` when this overlay
# deliberately replaces a path an earlier overlay supplies.
files:
  /etc/{name}.conf: {{mode: "0644"}}
# Accounts: never a password in clear (password_hash from `mkpasswd -m sha-512`, or locked).
users: {{}}
groups: {{}}
# Supervised services: a foreground command, restarted when it dies, logged to syslog.
services:
  {name}:
    command: httpd -f -p {{{{ {var}_port }}}} -h /srv/{name}
    setup: mkdir -p /srv/{name} && echo "{name} on $(hostname)" > /srv/{name}/index.html
    user: root
    depends: []
# Kernel settings and modules loaded at boot.
sysctl: {{}}
modules: []
# Checks `fwgen boot` runs for every board that uses this overlay.
checks:
  - run: cat /etc/{name}.conf
    contains: port
  - service: {name}
    timeout: 15
'''


def scaffold_overlay(name: str, folder: Path) -> Path:
    """Create `<folder>/<name>/` with a commented overlay.yaml and a templated file; returns
    the new overlay's folder. Refuses to touch an existing one."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ConfigError(f"'{name}' is not an overlay name",
                          hint="lower-case letters, digits, '_' and '-', starting with a letter")
    target = folder / name
    if target.exists():
        raise ConfigError(f"{target} already exists", hint="pick another name or --dir")
    staging = folder / f".{name}.tmp-{os.getpid()}"
    (staging / "files" / "etc").mkdir(parents=True)
    var = name.replace("-", "_")
    (staging / "overlay.yaml").write_text(SCAFFOLD.format(name=name, var=var))
    (staging / "files" / "etc" / f"{name}.conf.tmpl").write_text(
        f"# {name} settings for {{{{ hostname }}}} (board {{{{ board }}}}), rendered by fwgen\n"
        f"port={{{{ {var}_port }}}}\n")
    os.replace(staging, target)
    return target
