"""A user-written file (board, overlay, QEMU profile) as fwgen reads it: YAML with the
position of every node kept, validated against its JSON Schema, with the schema's defaults.

Every mistake becomes a `ConfigError` that names the file, line and column of the offending
node, the key path (`checks[1].port`) and, where one is close, a did-you-mean hint. The schemas
in fwgen/schema/ are the single source of the allowed keys, their help text and their defaults;
this module applies the defaults from there and nowhere else.

It is the bottom of the loading layer: fwgen.overlay and fwgen.config build their frozen
dataclasses from a `Document` and import nothing of each other's to do it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import jsonschema.exceptions

# jsonschema's format checkers import optional packages as it loads (isoduration and arrow,
# webcolors, uri_template, rfc3987_syntax's 38 lark grammars ...; oras brings them in through
# jsonschema's format extra): 1-2 s of CPU in every fwgen process, for `format` keywords fwgen
# never checks. They are hidden while jsonschema loads (it then leaves those checkers out),
# unless already imported, and visible again after. idna stays: requests needs it anyway.
# jsonschema itself is loaded when a document is first validated: a process that only uses
# these types (a fetch, `fwgen cache`) does without its ~0.1 s.
_UNCHECKED_FORMAT_MODULES = ("fqdn", "rfc3987", "rfc3986_validator", "rfc3987_syntax", "rfc3339_validator",
                             "webcolors", "jsonpointer", "uri_template", "isoduration")


@functools.cache
def _jsonschema() -> Any:
    hidden = [name for name in _UNCHECKED_FORMAT_MODULES if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # type: ignore[arg-type]
    try:
        import jsonschema
        import jsonschema.exceptions
        import jsonschema.validators
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
    return jsonschema


from .arch import Arch  # noqa: E402
from .errors import ConfigError  # noqa: E402

SCHEMA_DIR = Path(__file__).parent / "schema"

KeyPath = tuple[str | int, ...]


# ---------------------------------------------------------------------------------------------
# YAML with positions


@dataclass(frozen=True)
class Positions:
    """Where every node of a loaded YAML file is, by key path: what an error found after
    loading (an owner no layer supplies) needs of the file, without its data."""

    file: str
    values: dict[KeyPath, tuple[int, int]]  # key path -> (line, column) of the value node
    keys: dict[KeyPath, tuple[int, int]]  # key path -> (line, column) of the mapping key
    # Key path -> the file its subtree came from, where that is not `file`: a board that
    # `extends:` another keeps its parent's values with the parent's positions.
    origins: dict[KeyPath, str] = dataclasses.field(default_factory=dict)

    def error(self, path: KeyPath, message: str, hint: str | None = None, *, at_key=False):
        """A ConfigError at `path`: at the key itself when `at_key`, else at its value.

        An error about a key names the mapping that holds it (`kernel: unknown key 'x'`).
        """
        where = self.position(path, at_key=at_key)
        shown = path[:-1] if at_key else path
        return ConfigError(
            message, file=self.file_of(path), line=where[0], column=where[1],
            keypath=format_keypath(shown) or None, hint=hint,
        )

    def file_of(self, path: KeyPath) -> str:
        """The file the node at `path` was written in."""
        for length in range(len(path), 0, -1):
            if path[:length] in self.origins:
                return self.origins[path[:length]]
        return self.file

    def position(self, path: KeyPath, *, at_key: bool = False) -> tuple[int, int]:
        """The nearest known position: the node itself, else its closest ancestor."""
        table = self.keys if at_key else self.values
        if path in table:
            return table[path]
        if path in self.values:
            return self.values[path]
        return self.position(path[:-1]) if path else (1, 1)


@dataclass(frozen=True)
class Document(Positions):
    """A loaded YAML file: plain data plus the position of every node."""

    data: Any = None

    def positions(self) -> Positions:
        """The positions alone, for a dataclass built from this file to keep."""
        return Positions(self.file, self.values, self.keys, self.origins)


# ---------------------------------------------------------------------------------------------
# Inheritance: a child document on top of its parent


APPEND = "+"  # `packages+: [jq]` appends to the parent's list; `packages: [jq]` replaces it


def inherit(parent: Document, child: Document, *, not_inherited: tuple[str, ...] = ()) -> Document:
    """The child's settings on top of its parent's, every node keeping its own file's position.

    Mappings merge key by key, recursively; any other value the child gives (a list too)
    replaces the parent's; a key written `name+` appends the child's list to the parent's.
    Top-level keys in `not_inherited` (a board's own name) are taken from the child only.
    """
    merged = Document(child.file, {(): child.values.get((), (1, 1))}, {}, {})
    data = _merge(parent, child, (), merged, not_inherited)
    return dataclasses.replace(merged, data=data)


def _merge(parent: Document, child: Document, path: KeyPath, out: Document, skip: tuple[str, ...]) -> dict:
    base = _node(parent.data, path)
    result: dict = {}
    for key, value in base.items():
        if key not in skip:
            result[key] = value
            _copy_positions(parent, (*path, key), (*path, key), out)
    for key, value in _node(child.data, path).items():
        plain = key[:-len(APPEND)] if key.endswith(APPEND) else key
        if key.endswith(APPEND):
            result[plain] = _appended(parent, child, path, key, result.get(plain), out)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(parent, child, (*path, key), out, ())
            out.keys[(*path, key)] = child.keys[(*path, key)]
            out.values[(*path, key)] = child.values[(*path, key)]
            out.origins[(*path, key)] = child.file_of((*path, key))
        else:
            _drop_positions((*path, key), out)
            result[key] = value
            _copy_positions(child, (*path, key), (*path, key), out)
    return result


def _appended(parent: Document, child: Document, path: KeyPath, key: str, inherited: Any, out: Document) -> list:
    plain, given = key[:-len(APPEND)], _node(child.data, path)[key]
    if plain in _node(child.data, path):
        raise child.error((*path, key), f"both {plain} and {key} given", "replace the list, or append to it", at_key=True)
    if not isinstance(given, list):
        raise child.error((*path, key), f"{key} appends a list, got {_describe(given)}")
    if inherited is not None and not isinstance(inherited, list):
        raise child.error((*path, key), f"{key} appends to a list, but the parent's {plain} is {_describe(inherited)}",
                          at_key=True)
    start = len(inherited or [])
    for i in range(len(given)):
        _copy_positions(child, (*path, key, i), (*path, plain, start + i), out)
    out.keys[(*path, plain)] = child.keys[(*path, key)]
    out.values.setdefault((*path, plain), child.values[(*path, key)])
    return [*(inherited or []), *given]


def _node(data: Any, path: KeyPath) -> dict:
    for part in path:
        data = data[part]
    return data if isinstance(data, dict) else {}


def _copy_positions(source: Document, old: KeyPath, new: KeyPath, out: Document) -> None:
    """Positions (and origins) of `source`'s subtree at `old`, now found at `new`."""
    for table, target in ((source.values, out.values), (source.keys, out.keys)):
        for path, where in table.items():
            if path[:len(old)] == old:
                target[new + path[len(old):]] = where
    for path, file in source.origins.items():
        if path[:len(old)] == old:
            out.origins[new + path[len(old):]] = file
    out.origins[new] = source.file_of(old)


def _drop_positions(path: KeyPath, out: Document) -> None:
    for table in (out.values, out.keys, out.origins):
        for known in [p for p in table if p[:len(path)] == path]:
            del table[known]


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
        doc = Document(file, {(): _mark(root)}, {})
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
    elif e.context and e.context_mark and mark and e.context_mark.line != mark.line:
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
    _jsonschema().Draft202012Validator.check_schema(schema)
    return schema


def validate(doc: Document, schema_name: str) -> None:
    """Raise a ConfigError for the most relevant schema violation in `doc`, if any."""
    schema = load_schema(schema_name)
    if not isinstance(doc.data, dict):
        raise doc.error((), f"the top level must be a mapping of settings, not {_describe(doc.data)}")
    validator = _validator_class()(schema)
    # Sorted by position so that among equally relevant errors the first in the file wins.
    errors = sorted(validator.iter_errors(doc.data), key=lambda e: doc.position(tuple(e.absolute_path)))
    best = _jsonschema().exceptions.best_match(errors)
    if best is not None:
        raise _translate(doc, best, schema)


def _ecma_pattern(validator, pattern: str, instance: Any, schema: dict):
    """The `pattern` keyword with JSON Schema's meaning of `$`: the end of the string.

    Schema patterns are ECMA-262 regular expressions, where `$` matches only at the end;
    Python's also matches before a final newline, so 'root\\n' passed '^[a-z_]+$' and a
    value meant for one line of /etc/passwd could start another."""
    if validator.is_type(instance, "string") and not schema_regex(pattern).search(instance):
        yield _jsonschema().exceptions.ValidationError(f"{instance!r} does not match {pattern!r}")


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


@functools.cache
def _validator_class() -> Any:
    jsonschema = _jsonschema()
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


def _translate(doc: Document, error: jsonschema.exceptions.ValidationError, root: dict) -> ConfigError:
    path: KeyPath = tuple(error.absolute_path)
    value, keyword, rule = error.instance, error.validator, error.validator_value
    subschema = _resolve(error.schema, root)
    if keyword == "additionalProperties":
        known = sorted(subschema.get("properties", {}))
        extra = next(k for k in value if k not in known)
        return doc.error((*path, extra), f"unknown key '{extra}'",
                         did_you_mean(extra, known, "keys"), at_key=True)
    if keyword == "required":
        missing = next(k for k in rule if k not in value)
        help_text = subschema["properties"][missing].get("description", "")
        return doc.error(path, f"missing required key '{missing}'", help_text.rstrip(".") or None)
    if keyword == "uniqueItems":
        again = next(i for i, v in enumerate(value) if v in value[:i])
        return doc.error((*path, again), f"lists {_show(value[again])} twice")
    if keyword == "enum":
        noun = subschema.get("x-noun", "value")
        planned = subschema.get("x-not-implemented", {})
        if value in planned:  # named in the docs or by other tools: say why, not "unknown"
            return doc.error(path, f"{noun} {_show(value)} ({planned[value]}) is not implemented yet",
                             f"fwgen writes: {', '.join(str(v) for v in rule)}")
        hint = (Arch.hint_for(str(value)) if noun == "arch"  # the Arch table knows other tools' names
                else did_you_mean(str(value), [str(v) for v in rule], "known"))
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
    if keyword == "anyOf" and "x-anyof-help" in schema:
        return str(schema["x-anyof-help"])
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


def did_you_mean(word: str, candidates: Sequence[str], what: str) -> str | None:
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


def display_path(path: Path) -> Path:
    """The path relative to the working folder when inside it: shorter error messages."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path
