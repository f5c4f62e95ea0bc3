"""Debian version comparison, as Debian Policy 5.6.12 defines it.

A version is `[epoch:]upstream_version[-debian_revision]`. The epoch compares as a number;
upstream and revision compare by alternating runs: "First the initial part of each string
consisting entirely of non-digit characters is determined [and compared] ... The lexical
comparison is a comparison of ASCII values modified so that all the letters sort earlier
than all the non-letters and so that a tilde sorts before anything, even the end of a part."
Then the initial run of digits compares numerically (an empty run counts as 0).
"""

from __future__ import annotations

import functools

from ..errors import FormatError


@functools.lru_cache(maxsize=65536)
def parse_version(text: str) -> tuple[int, str, str]:
    """Split a Debian version into (epoch, upstream, revision); revision "" when absent.

    The upstream part may contain hyphens only when a revision is present: the revision is
    what follows the last hyphen (Policy 5.6.12).
    """
    text = text.strip()
    epoch = 0
    if ":" in text:
        head, _, rest = text.partition(":")
        if not head.isdigit():
            raise FormatError(f"version '{text}': epoch '{head}' is not a number")
        epoch, text_rest = int(head), rest
    else:
        text_rest = text
    upstream, sep, revision = text_rest.rpartition("-")
    if not sep:
        upstream, revision = text_rest, ""
    if not upstream:
        # Policy: upstream "should start with a digit"; dpkg only warns about that, but an
        # empty one is an error.
        raise FormatError(f"version '{text}': empty upstream version")
    return epoch, upstream, revision


def _order(char: str) -> int:
    # "~" sorts before everything, even the end of the part; letters before non-letters.
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        # Non-digit run, character by character; the end of a string orders as 0,
        # i.e. after "~" and before any other character.
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ca = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            cb = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ca != cb:
                return -1 if ca < cb else 1
            i += 1
            j += 1
        start_i, start_j = i, j
        while i < len(a) and a[i].isdigit():
            i += 1
        while j < len(b) and b[j].isdigit():
            j += 1
        na = int(a[start_i:i] or "0")
        nb = int(b[start_j:j] or "0")
        if na != nb:
            return -1 if na < nb else 1
    return 0


@functools.lru_cache(maxsize=262144)
def compare_versions(a: str, b: str) -> int:
    """Return -1, 0 or 1 as Debian version `a` sorts before, equal to, or after `b`."""
    ea, ua, ra = parse_version(a)
    eb, ub, rb = parse_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def satisfies(version: str, op: str, wanted: str) -> bool:
    """Whether `version` satisfies the relation `op wanted` (ops << <= = >= >>, and the
    obsolete < and > which Policy 7.1 says mean <= and >=)."""
    c = compare_versions(version, wanted)
    match op:
        case "<<":
            return c < 0
        case "<=" | "<":
            return c <= 0
        case "=":
            return c == 0
        case ">=" | ">":
            return c >= 0
        case ">>":
            return c > 0
    raise FormatError(f"unknown version relation '{op}'")
