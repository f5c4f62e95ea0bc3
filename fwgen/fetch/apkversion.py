"""Alpine's version ordering (apk-tools src/version.c, doc/apk-package.5.scd).

Grammar: `number{.number}...{letter}{_suffix{number}}...{~hash}{-r#}`. A version is split
into typed tokens and two versions are compared token by token:

- equal kinds compare by value; the first differing value decides;
- where the kinds differ, the version that goes on is newer, unless what follows is a
  pre-release suffix (`_alpha`, `_beta`, `_pre`, `_rc`): `1.1_alpha1 < 1.1 < 1.1_p1`;
- a `.`-component with leading zeros compares as a fraction would: "the more zeros, the
  smaller" (`1.001 < 1.01 < 1.1`), as apk-tools does by giving it the value -(zeros).

A string that does not follow the grammar is not a valid version; apk then falls back to a
plain string comparison (its test table: `1.0 < 1.0bc  # invalid. do string sort`).
"""

from __future__ import annotations

import re
from functools import cmp_to_key

# Token kinds, in the order that breaks ties when two versions diverge in shape: at the first
# position where the kinds differ, the version with the *lower* kind is the newer one
# (so "1.2.1" > "1.2" because DIGIT < END).
ZERO_DIGIT, DIGIT, LETTER, SUFFIX, SUFFIX_NO, HASH, REVISION, END = range(8)

PRE_SUFFIXES = ("alpha", "beta", "pre", "rc")  # sort before the bare version: -4..-1
POST_SUFFIXES = ("cvs", "svn", "git", "hg", "p")  # sort after it: 0..4

_SUFFIX = "|".join(PRE_SUFFIXES + POST_SUFFIXES)
_GRAMMAR = re.compile(
    rf"(?P<first>\d+)(?P<more>(?:\.\d+)*)(?P<letter>[a-z]?)"
    rf"(?P<suffixes>(?:_(?:{_SUFFIX})\d*)*)(?P<hash>~[0-9a-f]+)?(?:-r(?P<rev>\d+))?"
)
_ONE_SUFFIX = re.compile(rf"_({_SUFFIX})(\d*)")

Token = tuple[int, int | str]


def tokenize(version: str) -> list[Token] | None:
    """The typed tokens of `version`, or None when it does not follow Alpine's grammar."""
    m = _GRAMMAR.fullmatch(version)
    if m is None:
        return None
    tokens: list[Token] = [(DIGIT, int(m["first"]))]
    for part in m["more"].split(".")[1:]:
        stripped = part.lstrip("0")
        if len(stripped) == len(part):
            tokens.append((ZERO_DIGIT, int(part)))
        else:
            tokens.append((ZERO_DIGIT, -(len(part) - len(stripped))))
            tokens.append((DIGIT, int(stripped or "0")))
    if m["letter"]:
        tokens.append((LETTER, ord(m["letter"])))
    for name, number in _ONE_SUFFIX.findall(m["suffixes"]):
        tokens.append((SUFFIX, _suffix_rank(name)))
        if number:
            tokens.append((SUFFIX_NO, int(number)))
    if m["hash"]:
        tokens.append((HASH, m["hash"][1:]))
    if m["rev"] is not None:
        tokens.append((REVISION, int(m["rev"])))
    return tokens


def _suffix_rank(name: str) -> int:
    if name in PRE_SUFFIXES:
        return PRE_SUFFIXES.index(name) - len(PRE_SUFFIXES)
    return POST_SUFFIXES.index(name)


def is_valid(version: str) -> bool:
    """Whether `version` follows Alpine's version grammar."""
    return tokenize(version) is not None


def compare(a: str, b: str, *, fuzzy: bool = False) -> int:
    """-1, 0 or 1 as version `a` sorts before, equal to or after `b`.

    With `fuzzy`, `a` matches when it starts with the tokens of `b` (the `~` operator:
    `1.2.3 ~ 1.2`).
    """
    ta, tb = tokenize(a), tokenize(b)
    if ta is None or tb is None:
        return (a > b) - (a < b)
    for i in range(max(len(ta), len(tb))):
        ka, va = ta[i] if i < len(ta) else (END, 0)
        kb, vb = tb[i] if i < len(tb) else (END, 0)
        if ka == kb:
            if va != vb:
                return -1 if va < vb else 1  # type: ignore[operator]
            continue
        if fuzzy and kb == END:
            return 0
        return _compare_shapes(ka, va, kb, vb)
    return 0


def _compare_shapes(ka: int, va: int | str, kb: int, vb: int | str) -> int:
    # "the non-terminating version is greater unless it's a suffix indicating pre-release"
    if ka == SUFFIX and isinstance(va, int) and va < 0:
        return -1
    if kb == SUFFIX and isinstance(vb, int) and vb < 0:
        return 1
    return -1 if ka > kb else 1


sort_key = cmp_to_key(compare)


def satisfies(version: str, op: str, wanted: str) -> bool:
    """Whether `version` satisfies the constraint `op wanted`.

    `op` is one of `<`, `<=`, `=`, `>=`, `>`, `~` (fuzzy: same leading tokens), `>~`, `<~`
    (fuzzy equality or strictly greater/less), as in APKINDEX `D:` tokens; Debian's `<<` and
    `>>` (the spelling of `fwgen.fetch.package.Relation`) mean `<` and `>`.
    """
    if op == "~" or op == "=~":
        return compare(version, wanted, fuzzy=True) == 0
    result = compare(version, wanted)
    allowed = {
        "<": (-1,), "<<": (-1,), "<=": (-1, 0), "=": (0,), ">=": (0, 1), ">": (1,), ">>": (1,),
        ">~": (1,), "<~": (-1,),
    }.get(op)
    if allowed is None:
        raise ValueError(f"unknown version operator {op!r}")
    if op in (">~", "<~") and compare(version, wanted, fuzzy=True) == 0:
        return True
    return result in allowed
