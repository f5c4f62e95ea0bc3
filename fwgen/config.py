"""Board and QEMU-profile files: YAML with positions -> JSON Schema -> frozen dataclasses.

Every mistake in a file becomes a `ConfigError` that names the file, line and column of the
offending node, the key path (`checks[1].port`) and, where one is close, a did-you-mean hint:

    boards/bad.yaml:14:7: overlays[2]: unknown overlay 'htpd' (did you mean 'httpd'?)

The schemas in fwgen/schema/ are the single source of the allowed keys, their help text and
their defaults; this module applies the defaults from there and nowhere else.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import yaml

import fwgen

from .arch import Arch
from .board import (
    Board,
    BusyboxSpec,
    Check,
    DiskSpec,
    Feed,
    KernelSpec,
    Limits,
    PackageFile,
    Policy,
    QemuProfile,
    QemuSpec,
    SdcardSpec,
    UbootSpec,
)
from .dtb import Fixup
from .errors import ConfigError, UserError
from .overlay import (
    Overlay,
    declared_variables,
    overlay_checks,
    render_checks,
    resolve_overlays,
    resolve_variables,
    variable_text,
)

SCHEMA_DIR = Path(__file__).parent / "schema"
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

KeyPath = tuple[str | int, ...]


# ---------------------------------------------------------------------------------------------
# Folders


@dataclass(frozen=True)
class TreeDirs:
    """The folders of the fwgen tree itself (empty tuples for an installed package)."""

    boards: tuple[Path, ...]
    qemu: tuple[Path, ...]
    overlays: tuple[Path, ...]


def default_dirs() -> TreeDirs:
    """The in-tree boards/, qemu/ and overlays/ folders, where they exist."""
    # In a checkout the package sits in <repo>/fwgen; an installed wheel has no such siblings.
    root = Path(fwgen.__file__).resolve().parents[1]

    def existing(name: str) -> tuple[Path, ...]:
        folder = root / name
        return (folder,) if folder.is_dir() else ()

    return TreeDirs(boards=existing("boards"), qemu=existing("qemu"), overlays=existing("overlays"))


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: list[Path] = []
    for path in paths:
        resolved = Path(path).resolve()
        if resolved not in seen:
            seen.append(resolved)
    return seen


def _search_dirs(user: Sequence[Path], board_file: Path | None, sub: str, tree: Iterable[Path]):
    """User folders, then `<sub>/` beside the board file, then the tree's.

    A vendor keeps `product.yaml` with `overlays/` next to it, or a tree shaped like ours
    (`boards/product.yaml` beside `overlays/`); both load without extra flags.
    """
    beside: list[Path] = []
    if board_file is not None:
        beside = [board_file.parent / sub]
        if board_file.parent.name == "boards":
            beside.append(board_file.parent.parent / sub)
    return [d for d in _unique([*user, *beside, *tree]) if d.is_dir()]


# ---------------------------------------------------------------------------------------------
# Finding and listing boards


def _is_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return "/" in text or text.endswith((".yaml", ".yml"))


def _board_dirs(boards_dirs: Sequence[Path]) -> list[Path]:
    return [d for d in _unique([*boards_dirs, *default_dirs().boards]) if d.is_dir()]


def find_board(name_or_path: str | Path, boards_dirs: Sequence[Path] = ()) -> Path:
    """The board file for a name (`qemu-aarch64`) or a path (`./vendor/product.yaml`).

    Names are looked up as `<dir>/<name>.yaml` in `boards_dirs`, then in the tree's boards/.
    """
    if _is_path(name_or_path) and Path(name_or_path).is_file():
        return Path(name_or_path)
    if _is_path(name_or_path):
        raise ConfigError("file not found", file=str(name_or_path))
    for folder in _board_dirs(boards_dirs):
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    known = [name for name, _, _ in list_boards(boards_dirs)]
    raise UserError(f"unknown board '{name_or_path}'", _did_you_mean(str(name_or_path), known, "boards"))


def list_boards(boards_dirs: Sequence[Path] = ()) -> list[tuple[str, Path, str]]:
    """(name, path, description) of every board; earlier folders hide later ones' namesakes."""
    found: dict[str, tuple[str, Path, str]] = {}
    for folder in _board_dirs(boards_dirs):
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            if path.stem not in found:
                found[path.stem] = (path.stem, path, _peek_description(path))
    return sorted(found.values())


def _peek_description(path: Path) -> str:
    """The description without validating: `fwgen boards` lists broken boards too."""
    try:
        data = read_yaml(path).data
    except ConfigError:
        return "(unreadable: run `fwgen show` on it)"
    if isinstance(data, dict) and isinstance(data.get("description"), str):
        return data["description"]
    return ""


def board_digest(board: Board) -> str:
    """SHA-256 (hex) of the board file's bytes, for the manifest."""
    return hashlib.sha256(board.source.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# YAML with positions


@dataclass(frozen=True)
class Document:
    """A loaded YAML file: plain data plus the position of every node, by key path."""

    file: str
    data: Any
    values: dict[KeyPath, tuple[int, int]]  # key path -> (line, column) of the value node
    keys: dict[KeyPath, tuple[int, int]]  # key path -> (line, column) of the mapping key

    def error(self, path: KeyPath, message: str, hint: str | None = None, *, at_key=False):
        """A ConfigError at `path`: at the key itself when `at_key`, else at its value.

        An error about a key names the mapping that holds it (`kernel: unknown key 'x'`).
        """
        where = self.position(path, at_key=at_key)
        shown = path[:-1] if at_key else path
        return ConfigError(
            message, file=self.file, line=where[0], column=where[1],
            keypath=format_keypath(shown) or None, hint=hint,
        )

    def position(self, path: KeyPath, *, at_key: bool = False) -> tuple[int, int]:
        """The nearest known position: the node itself, else its closest ancestor."""
        table = self.keys if at_key else self.values
        if path in table:
            return table[path]
        if path in self.values:
            return self.values[path]
        return self.position(path[:-1]) if path else (1, 1)


def format_keypath(path: KeyPath) -> str:
    """('checks', 1, 'port') -> 'checks[1].port'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _mark(node: yaml.Node) -> tuple[int, int]:
    # PyYAML counts from 0; editors and compilers count from 1.
    return node.start_mark.line + 1, node.start_mark.column + 1


# Limits on what a board, overlay or profile file may be. Real files are a few KiB, a dozen
# levels deep and a few hundred values; these bounds refuse hostile files (a billion-laughs
# alias bomb, 500 nested lists, a 50 MB list) in milliseconds instead of exhausting memory,
# the recursion limit or the user's patience.
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 50_000  # values after expanding aliases (`*x` copies its anchor's whole tree)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the nesting of composed nodes bounded: its composer
    recurses once per level, and Python's stack ends near 300 levels."""

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file, self.depth = file, 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                line, column = _mark(self.peek_event())
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", file=self.file,
                                  line=line, column=column)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml(path: Path) -> Document:
    """Parse one YAML document, keeping the position of every key, value and list item."""
    file = str(path)
    text = _read_text(path, file)
    try:
        loader = _BoundedLoader(text, file)
    except yaml.reader.ReaderError as e:  # PyYAML checks every character before parsing
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise ConfigError(f"YAML syntax error: control character U+{e.character:04X} is not allowed",
                          file=file, line=line, column=column,
                          hint="write it as an escape in a double-quoted string") from e
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError("file is empty", file=file, line=1, column=1,
                              hint="expected a mapping of settings")
        doc = Document(file, None, {(): _mark(root)}, {})
        data = _construct(loader, root, (), doc, ())
    except yaml.MarkedYAMLError as e:
        raise _yaml_error(file, e) from e
    finally:
        loader.dispose()
    return dataclasses.replace(doc, data=data)


def _read_text(path: Path, file: str) -> str:
    """The file's text, refused unread beyond MAX_FILE_BYTES (a FIFO or /dev/zero included)."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(f"larger than {MAX_FILE_BYTES // 1024} KiB, too large for a settings file",
                              file=file)
        return raw.decode("utf-8")
    except FileNotFoundError as e:
        raise ConfigError("file not found", file=file) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", file=file) from e


def _yaml_error(file: str, e: yaml.MarkedYAMLError) -> ConfigError:
    mark = e.problem_mark or e.context_mark
    problem = e.problem or e.context or "invalid YAML"
    hint = None
    if "'\\t'" in problem:
        problem, hint = "tab character in indentation", "YAML indents with spaces only"
    elif e.context and "single document" in e.context:
        problem, hint = "a second document where one is expected", "remove the '---' line"
    elif e.context and e.context_mark and e.problem_mark and e.context_mark.line != mark.line:
        # "while parsing a block mapping" names where the unfinished construct began.
        hint = f"{e.context} started on line {e.context_mark.line + 1}"
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return ConfigError(f"YAML syntax error: {problem}", file=file, line=line, column=column, hint=hint)


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, doc: Document,
               parents: tuple[int, ...]) -> Any:
    doc.values[path] = _mark(node)
    if id(node) in parents:  # `a: &x [*x]` refers to itself: no finite value
        raise doc.error(path, "alias refers to itself")
    if len(doc.values) > MAX_VALUES:
        raise doc.error(path, f"more than {MAX_VALUES} values once aliases are expanded",
                        "an alias copies its anchor's whole value; this file multiplies them")
    if len(path) > MAX_DEPTH:  # aliases nest anchors inside anchors beyond what was composed
        raise doc.error(path, f"nested more than {MAX_DEPTH} levels deep once aliases are expanded")
    parents = (*parents, id(node))
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, (*path, i), doc, parents) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        return _construct_mapping(loader, node, path, doc, parents)
    return loader.construct_object(node, deep=True)


def _construct_mapping(loader, node: yaml.MappingNode, path: KeyPath, doc: Document,
                       parents: tuple[int, ...]) -> dict:
    # PyYAML silently keeps the last of two equal keys; a board with two `packages:` lists
    # almost always means one of them is ignored by mistake.
    explicit = {id(key_node) for key_node, _ in node.value}
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys, which come first
    result: dict = {}
    first_seen: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            line, column = _mark(key_node)
            raise ConfigError(f"key {key!r} is not a string", file=doc.file, line=line,
                              column=column, keypath=format_keypath(path) or None)
        is_explicit = id(key_node) in explicit
        if key in first_seen and is_explicit:
            line, column = _mark(key_node)
            raise ConfigError(f"duplicate key '{key}'", file=doc.file, line=line, column=column,
                              keypath=format_keypath(path) or None,
                              hint=f"first given on line {first_seen[key]}")
        if is_explicit:
            first_seen[key] = _mark(key_node)[0]
        doc.keys[(*path, key)] = _mark(key_node)
        result[key] = _construct(loader, value_node, (*path, key), doc, parents)
    return result


# ---------------------------------------------------------------------------------------------
# Schema validation, readable errors and defaults


@functools.cache
def load_schema(name: str) -> dict:
    """fwgen/schema/<name>.schema.json, checked against the Draft 2020-12 meta-schema."""
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    # "x-import-defs": {"board": ["check"]} shares definitions between schema files without
    # copying them: overlay.yaml checks are the board's checks.
    for other, names in schema.get("x-import-defs", {}).items():
        schema["$defs"].update({n: load_schema(other)["$defs"][n] for n in names})
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate(doc: Document, schema_name: str) -> None:
    """Raise a ConfigError for the most relevant schema violation in `doc`, if any."""
    schema = load_schema(schema_name)
    if not isinstance(doc.data, dict):
        raise doc.error((), f"the top level must be a mapping of settings, not {_describe(doc.data)}")
    validator = _Validator(schema)
    # Sorted by position so that among equally relevant errors the first in the file wins.
    errors = sorted(validator.iter_errors(doc.data), key=lambda e: doc.position(tuple(e.absolute_path)))
    best = jsonschema.exceptions.best_match(errors)
    if best is not None:
        raise _translate(doc, best, schema)


def _ecma_pattern(validator, pattern: str, instance: Any, schema: dict):
    """The `pattern` keyword with JSON Schema's meaning of `$`: the end of the string.

    Schema patterns are ECMA-262 regular expressions, where `$` matches only at the end;
    Python's also matches before a final newline, so 'root\\n' passed '^[a-z_]+$' and a
    value meant for one line of /etc/passwd could start another."""
    if validator.is_type(instance, "string") and not schema_regex(pattern).search(instance):
        yield jsonschema.exceptions.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def schema_regex(pattern: str) -> re.Pattern[str]:
    """`pattern` with every `$` anchor (not escaped, not in a [class]) made `\\Z`."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        out.append("\\Z" if char == "$" and not in_class else char)
        i += 1
    return re.compile("".join(out))


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


def _translate(doc: Document, error: jsonschema.exceptions.ValidationError, root: dict) -> ConfigError:
    path: KeyPath = tuple(error.absolute_path)
    value, keyword, rule = error.instance, error.validator, error.validator_value
    subschema = _resolve(error.schema, root)
    if keyword == "additionalProperties":
        known = sorted(subschema.get("properties", {}))
        extra = next(k for k in value if k not in known)
        return doc.error((*path, extra), f"unknown key '{extra}'",
                         _did_you_mean(extra, known, "keys"), at_key=True)
    if keyword == "required":
        missing = next(k for k in rule if k not in value)
        help_text = subschema["properties"][missing].get("description", "")
        return doc.error(path, f"missing required key '{missing}'", help_text.rstrip(".") or None)
    if keyword == "uniqueItems":
        again = next(i for i, v in enumerate(value) if v in value[:i])
        return doc.error((*path, again), f"lists {_show(value[again])} twice")
    if keyword == "enum":
        noun = subschema.get("x-noun", "value")
        known = ", ".join(str(v) for v in rule)
        planned = subschema.get("x-not-implemented", {})
        if value in planned:  # named in the docs or by other tools: say why, not "unknown"
            return doc.error(path, f"{noun} {_show(value)} ({planned[value]}) is not implemented yet",
                             f"fwgen writes: {known}")
        hint = (Arch.hint_for(str(value)) if noun == "arch"  # the Arch table knows other tools' names
                else _did_you_mean(str(value), [str(v) for v in rule], "known"))
        return doc.error(path, f"unknown {noun} {_show(value)}", hint)
    return doc.error(path, _plain_words(keyword, rule, value, subschema))


def _plain_words(keyword: str, rule: Any, value: Any, schema: dict) -> str:
    if keyword == "type":
        wanted = " or ".join(_TYPE_WORDS[t] for t in ([rule] if isinstance(rule, str) else rule))
        return f"expected {wanted}, got {_describe(value)}"
    if keyword == "minimum":
        return f"must be at least {rule}, got {value}"
    if keyword == "maximum":
        return f"must be at most {rule}, got {value}"
    if keyword == "exclusiveMinimum":
        return f"must be more than {rule}, got {value}"
    if keyword == "minLength":
        return "must not be empty"
    if keyword == "minItems":
        return f"needs at least {rule} item{'s' if rule != 1 else ''}"
    if keyword == "pattern":
        return f"{_show(value)} is not {schema.get('x-pattern-help', f'matching {rule}')}"
    return f"{_show(value)}: {keyword} {rule!r} not satisfied"


_TYPE_WORDS = {
    "object": "a mapping", "array": "a list", "string": "a string", "integer": "a whole number",
    "number": "a number", "boolean": "true or false", "null": "nothing (null)",
}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    kind = {str: "a string", int: "a whole number", float: "a number"}.get(type(value), type(value).__name__)
    return f"{kind} ({_show(value)})"


def _show(value: Any) -> str:
    # repr() escapes line breaks and control characters: an error stays on one line.
    return f"'{value}'" if isinstance(value, str) and value.isprintable() else repr(value)


def _resolve(schema: dict, root: dict) -> dict:
    """Follow a local `$ref` ('#/$defs/feed') to the schema it names."""
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _did_you_mean(word: str, candidates: Sequence[str], what: str) -> str | None:
    close = difflib.get_close_matches(word, candidates, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    if candidates:
        return f"{what}: " + ", ".join(sorted(candidates))
    return None


def apply_defaults(data: Any, schema: dict, root: dict | None = None) -> Any:
    """A copy of `data` with every missing key that has a schema `default` filled in."""
    root = root or schema
    schema = _resolve(schema, root)
    if isinstance(data, dict):
        result = {}
        properties = schema.get("properties", {})
        for key, sub in properties.items():
            sub = _resolve(sub, root)
            if key in data:
                result[key] = apply_defaults(data[key], sub, root)
            elif "default" in sub:
                result[key] = apply_defaults(copy.deepcopy(sub["default"]), sub, root)
        return result | {k: v for k, v in data.items() if k not in properties}
    if isinstance(data, list) and "items" in schema:
        return [apply_defaults(item, schema["items"], root) for item in data]
    return data


# ---------------------------------------------------------------------------------------------
# QEMU profiles


def list_qemu_profiles(qemu_dirs: Sequence[Path] = (), board_file: Path | None = None) -> dict[str, Path]:
    """Profile name -> file; a name in an earlier folder hides the same name in later ones."""
    found: dict[str, Path] = {}
    for folder in _search_dirs(qemu_dirs, board_file, "qemu", default_dirs().qemu):
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def load_qemu_profile(name: str, qemu_dirs: Sequence[Path] = ()) -> QemuProfile:
    """Load qemu/<name>.yaml from `qemu_dirs` (then the tree's qemu/), validated."""
    profiles = list_qemu_profiles(qemu_dirs)
    if name not in profiles:
        raise UserError(f"unknown qemu profile '{name}'", _did_you_mean(name, list(profiles), "profiles"))
    return read_qemu_profile(profiles[name])


def read_qemu_profile(path: Path) -> QemuProfile:
    """Load one QEMU profile file, validated against qemu.schema.json."""
    doc = read_yaml(path)
    validate(doc, "qemu")
    data = apply_defaults(doc.data, load_schema("qemu"))
    arch = Arch.from_name(data["arch"])
    return QemuProfile(
        name=data.get("name", path.stem),
        arch=arch,
        binary=data.get("binary", arch.qemu_system),
        machine=data["machine"],
        console=data["console"],
        memory=int(data["memory"]),  # JSON Schema's integer also admits 256.0
        cpu=data["cpu"],
        disk=data["disk"],
        nic=data["nic"],
        args=tuple(data["args"]),
        firmware=tuple(data["firmware"]),
        source=path,
        dtb_fixups=tuple(
            Fixup(f["node"], set=tuple((k, tuple(v)) for k, v in f.get("set", {}).items()),
                  delete=tuple(f.get("delete", ())))
            for f in data["dtb_fixups"]
        ),
    )


# ---------------------------------------------------------------------------------------------
# Boards


def load_board(
    name_or_path: str | Path,
    *,
    boards_dirs: Sequence[Path] = (),
    qemu_dirs: Sequence[Path] = (),
    overlay_dirs: Sequence[Path] = (),
) -> Board:
    """Find, parse, validate and resolve a board into a `Board`.

    Overlays become absolute folder paths (each holding an overlay.yaml); kernel.image,
    kernel.modules_from and feed keys become absolute paths, read relative to the board file.
    """
    path = find_board(name_or_path, boards_dirs).resolve()
    doc = read_yaml(_display_path(path))
    validate(doc, "board")
    check_checks(doc)
    data = apply_defaults(doc.data, load_schema("board"))
    check_persist_storage(doc, has_persistent_storage(data))
    qemu = _resolve_qemu(doc, data.get("qemu"), path, qemu_dirs)
    if qemu is not None and qemu.profile.arch.value != data["arch"]:
        raise doc.error(("qemu", "profile"),
                        f"qemu profile '{qemu.profile.name}' emulates {qemu.profile.arch.value} "
                        f"but the board is {data['arch']}",
                        "pick a profile for the board's arch")
    _check_fit_outputs(doc, data["outputs"])
    overlays = _resolve_overlay_stack(doc, data, path, overlay_dirs)
    board = Board(
        name=_board_name(doc, data, path),
        arch=Arch.from_name(data["arch"]),
        source=path,
        description=data["description"],
        hostname=data["hostname"],
        feeds=tuple(_build_feed(doc, i, feed, path) for i, feed in enumerate(data["feeds"])),
        kernel=_build_kernel(doc, data["kernel"], path),
        busybox=_build_busybox(doc, data["busybox"], path),
        packages=tuple(p if isinstance(p, str) else p["name"] for p in data["packages"]),
        package_feeds=_pinned_feeds(doc, data),
        exclude=tuple(data["exclude"]),
        nodeps=tuple(data["nodeps"]),
        package_files=_build_package_files(doc, data["package_files"], path),
        provides=dict(_split_provided(item) for item in data["provides"]),
        exclude_paths=tuple(data["exclude_paths"]),
        overlays=tuple(str(o.path) for o in overlays),
        variables={k: variable_text(v) for k, v in data["variables"].items()},
        outputs=tuple(data["outputs"]),
        disk=DiskSpec(**data["disk"]),
        sdcard=SdcardSpec(**dict(data["sdcard"], firmware=tuple(data["sdcard"]["firmware"]))),
        uboot=UbootSpec(**data["uboot"]),
        qemu=qemu,
        checks=(),  # rendered below, once the variables are known
        limits=_build_limits(data["limits"], data["outputs"], qemu),
        policy=Policy(**dict(data["policy"], setuid_allowed=tuple(data["policy"]["setuid_allowed"]))),
    )
    variables = resolve_variables(board, overlays)  # references resolve, or fail now
    board = dataclasses.replace(board, checks=tuple(render_checks(doc, data["checks"], variables)))
    overlay_checks(board, overlays)  # rendered and forwarded, or fail now
    return board


def _check_fit_outputs(doc: Document, outputs: list[str]) -> None:
    """The FIT carries the kernel with an initramfs: the whole root, or a disk's boot one."""
    if "fit" in outputs and ("sdcard" in outputs or not {"disk", "initramfs"} & set(outputs)):
        raise doc.error(("outputs",), "output fit needs disk or initramfs beside it (and no sdcard)",
                        "a FIT holds the kernel and the initramfs: the whole root, or the boot one of a disk")


def _build_limits(limits: dict, outputs: list[str], qemu: QemuSpec | None) -> Limits:
    """The board's limits, the image bound defaulting to the guest RAM of an initramfs root."""
    image_size = limits.get("image_size")
    if image_size is None:
        disk_root = "disk" in outputs or "sdcard" in outputs
        ram = (qemu.memory or qemu.profile.memory) if qemu is not None else None
        image_size = ram if ram and not disk_root else Limits.image_size
    return Limits(package_size=limits["package_size"], image_size=image_size)


def _board_name(doc: Document, data: dict, path: Path) -> str:
    """`name:`, else the file's name, which must then be a name too (it reaches os-release)."""
    if "name" in data:
        return data["name"]
    rule = load_schema("board")["properties"]["name"]
    if not schema_regex(rule["pattern"]).search(path.stem):
        raise doc.error((), f"the file name {path.stem!r} is not {rule['x-pattern-help']}",
                        "rename the file or set name:")
    return path.stem


def _display_path(path: Path) -> Path:
    """The path relative to the working folder when inside it: shorter error messages."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _relative_file(doc: Document, keypath: KeyPath, value: str | None, board: Path) -> Path | None:
    if value is None:
        return None
    resolved = (board.parent / value).resolve()
    if not resolved.exists():
        raise doc.error(keypath, f"{value} not found", f"looked for {resolved}")
    return resolved


def _build_feed(doc: Document, index: int, feed: dict, board: Path) -> Feed:
    keys = tuple(
        _relative_file(doc, ("feeds", index, "keys", k), key, board) for k, key in enumerate(feed["keys"])
    )
    line, column = doc.position(("feeds", index))
    return Feed(name=feed["name"], type=feed["type"], url=feed["url"], suite=feed["suite"],
                components=tuple(feed["components"]), keys=keys, arch=feed.get("arch"),
                where=f"{doc.file}:{line}:{column}")


def _build_package_files(doc: Document, items: list[dict], board: Path) -> tuple[PackageFile, ...]:
    files = []
    for i, item in enumerate(items):
        keypath = ("package_files", i, "path")
        path = _relative_file(doc, keypath, item["path"], board)
        assert path is not None
        if not path.is_file():
            raise doc.error(keypath, f"{item['path']} is not a file", f"looked at {path}")
        line, column = doc.position(keypath)
        files.append(PackageFile(path, item["sha256"], f"{doc.file}:{line}:{column}: {format_keypath(keypath[:2])}"))
    return tuple(files)


def _split_provided(item: str) -> tuple[str, str | None]:
    """'kernel=5.15.137-1' -> ('kernel', '5.15.137-1'); 'libc' -> ('libc', None)."""
    name, _, version = item.partition("=")
    return name, version or None


def _pinned_feeds(doc: Document, data: dict) -> dict[str, str]:
    """`packages` items written `{name, feed}`: package name -> feed name, checked."""
    feeds = [feed["name"] for feed in data["feeds"]]
    pinned: dict[str, str] = {}
    for i, item in enumerate(data["packages"]):
        if isinstance(item, str):
            continue
        if item["feed"] not in feeds:
            raise doc.error(("packages", i, "feed"), f"unknown feed '{item['feed']}'",
                            _did_you_mean(item["feed"], feeds, "feeds") or f"feeds: {', '.join(feeds) or 'none'}")
        pinned[item["name"]] = item["feed"]
    return pinned


def _build_busybox(doc: Document, busybox: dict, board: Path) -> BusyboxSpec:
    config = tuple(_relative_file(doc, ("busybox", "config", i), name, board)
                   for i, name in enumerate(busybox["config"]))
    return BusyboxSpec(
        package=busybox["package"],
        version=busybox.get("version"),
        sha256=busybox.get("sha256"),
        urls=tuple(busybox.get("urls", ())),
        config=tuple(p for p in config if p is not None),
    )


def _build_kernel(doc: Document, kernel: dict, board: Path) -> KernelSpec:
    return KernelSpec(
        package=kernel["package"],
        cmdline=kernel["cmdline"],
        modules=tuple(kernel["modules"]),
        image=_relative_file(doc, ("kernel", "image"), kernel["image"], board),
        modules_from=_relative_file(doc, ("kernel", "modules_from"), kernel["modules_from"], board),
    )


def _resolve_qemu(doc: Document, qemu: dict | None, board: Path, qemu_dirs) -> QemuSpec | None:
    if qemu is None:
        return None
    name = qemu["profile"]
    profiles = list_qemu_profiles(qemu_dirs, board)
    if name not in profiles:
        raise doc.error(("qemu", "profile"), f"unknown qemu profile '{name}'",
                        _did_you_mean(name, list(profiles), "profiles"))
    memory = int(qemu["memory"]) if "memory" in qemu else None
    return QemuSpec(profile=read_qemu_profile(profiles[name]), memory=memory,
                    forward=tuple(qemu["forward"]), timeout=float(qemu["timeout"]))


def find_overlays(overlay_dirs: Sequence[Path] = (), board_file: Path | None = None) -> dict[str, Path]:
    """Overlay name -> folder: every folder holding an overlay.yaml, earlier folders first."""
    found: dict[str, Path] = {}
    for folder in _search_dirs(overlay_dirs, board_file, "overlays", default_dirs().overlays):
        for meta in sorted(folder.glob("*/overlay.yaml")):
            found.setdefault(meta.parent.name, meta.parent)
    return found


def _resolve_overlays(doc: Document, names: list[str], board: Path, overlay_dirs) -> tuple[str, ...]:
    available = find_overlays(overlay_dirs, board)
    resolved = []
    for i, name in enumerate(names):
        if _is_path(name) or name.startswith("."):
            folder = (board.parent / name).resolve()
            if not (folder / "overlay.yaml").is_file():
                raise doc.error(("overlays", i), f"no overlay at '{name}'",
                                f"{folder} has no overlay.yaml")
        elif name in available:
            folder = available[name]
        else:
            raise doc.error(("overlays", i), f"unknown overlay '{name}'",
                            _did_you_mean(name, list(available), "overlays"))
        resolved.append(str(folder))
    return tuple(resolved)


def _resolve_overlay_stack(doc: Document, data: dict, board: Path, overlay_dirs) -> list[Overlay]:
    """The board's overlays and their dependencies in application order, each overlay.yaml
    validated; the board's variables must be ones its overlays declare."""

    folders = _resolve_overlays(doc, data["overlays"], board, overlay_dirs)
    overlays = resolve_overlays(folders, find_overlays(overlay_dirs, board))
    known = declared_variables(overlays)
    for name in data["variables"]:
        if name not in known:
            raise doc.error(("variables", name), f"no overlay of the board declares variable '{name}'",
                            _did_you_mean(name, sorted(known), "variables"), at_key=True)
    for overlay in overlays:
        check_persist_storage(overlay.doc, has_persistent_storage(data))
    return overlays


def has_persistent_storage(data: dict) -> bool:
    """Whether a board (validated, defaults applied) keeps what its guest writes across a
    reboot: a disk or SD card with a data partition (the root's overlay lives there)."""
    return bool({"disk", "sdcard"} & set(data["outputs"])) and data["disk"]["data_size"] > 0


def check_persist_storage(doc: Document, persistent: bool) -> None:
    """A persist check needs storage that survives a reboot: refused on a board without it
    when the board is loaded, not after a build and a boot."""
    if persistent:
        return
    for i, item in enumerate(doc.data.get("checks", [])):
        if "persist" in item:
            raise doc.error(("checks", i, "persist"), "a persist check needs storage that survives a reboot, "
                            "and this board has none (no disk or sdcard output with a data partition)",
                            "add a disk or sdcard output (disk.data_size above 0) or drop the check",
                            at_key=True)


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
        return  # none, or an overlay's "{{ variable }}": checked once rendered (overlay_checks)
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


def board_to_dict(board: Board) -> dict:
    """The fully resolved board as JSON-ready data (paths and arches as strings)."""
    return _plain(board)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
