"""Debian version ordering (Policy 5.6.12), checked against a table and against dpkg itself."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fwgen.errors import FormatError
from fwgen.fetch.debversion import compare_versions, parse_version, satisfies

# (a, b, expected sign of compare(a, b))
TABLE = [
    ("1.0", "1.0", 0),
    ("1.0", "1.0-0", 0),  # an absent revision compares like "0"
    ("1.0", "1.1", -1),
    ("1.2", "1.10", -1),  # digit runs compare numerically
    ("1.0", "1.0.0", -1),
    ("1.0~rc1", "1.0", -1),  # tilde sorts before the end of the part
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~~", "1.0~", -1),
    ("1.0~", "1.0", -1),
    ("1.0a", "1.0", 1),  # a letter sorts after the end of the part
    ("1.0a", "1.0+", -1),  # letters sort before non-letters
    ("1.0+", "1.0.", -1),  # then by ASCII: '+' (43) < '.' (46)
    ("1.0-1", "1.0-2", -1),
    ("1.0-1", "1.0-1.1", -1),
    ("1.0-1~bpo1", "1.0-1", -1),
    ("1.0-10", "1.0-9", 1),
    ("1:0.1", "2.0", 1),  # epoch wins
    ("0:1.0", "1.0", 0),
    ("2:1.0", "10:0.1", -1),
    ("2.30-1", "2.4-1", 1),
    ("1.2.3-4-5", "1.2.3-4-6", -1),  # the revision is after the last hyphen
    ("1:1.35.0-4+deb12u1+b1", "1:1.35.0-4+deb12u1", 1),
    ("2.36-9+deb12u14", "2.36-9+deb12u4", 1),
    ("6.1.0-13", "6.1.0-9", 1),
    ("1.18.2-6", "1.18", 1),
    ("005", "5", 0),  # leading zeros
    ("a1.0", "1.0", 1),  # non-digit start: Policy frowns, dpkg orders it anyway
    ("1.0.", "1.0", 1),
]


@pytest.mark.parametrize(("a", "b", "expected"), TABLE)
def test_compare_versions_table(a, b, expected):
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg not installed (independent oracle)")
@pytest.mark.parametrize(("a", "b", "expected"), TABLE)
def test_compare_versions_agrees_with_dpkg(a, b, expected):
    op = {-1: "lt", 0: "eq", 1: "gt"}[expected]
    result = subprocess.run(["dpkg", "--compare-versions", a, op, b], capture_output=True)
    assert result.returncode == 0, f"dpkg disagrees: {a} {op} {b}"


def test_parse_version_splits_epoch_upstream_revision():
    assert parse_version("1:2.3-4-5") == (1, "2.3-4", "5")
    assert parse_version("2.3") == (0, "2.3", "")


def test_parse_version_rejects_bad_epoch_and_empty_upstream():
    with pytest.raises(FormatError, match="epoch 'x'"):
        parse_version("x:1.0")
    with pytest.raises(FormatError, match="empty upstream"):
        parse_version("-1")


@pytest.mark.parametrize(
    ("version", "op", "wanted", "expected"),
    [
        ("1.17", ">=", "1.18", False),
        ("1.18.2-6", ">=", "1.18", True),
        ("1.0", "<<", "1.0", False),
        ("1.0~1", "<<", "1.0", True),
        ("1.0", "<=", "1.0", True),
        ("1.0", "=", "1.0-0", True),
        ("2.0", ">>", "1.0", True),
        ("1.0", "<", "1.0", True),  # obsolete "<" means "<="
        ("1.0", ">", "1.0", True),  # obsolete ">" means ">="
    ],
)
def test_satisfies(version, op, wanted, expected):
    assert satisfies(version, op, wanted) is expected


def test_satisfies_rejects_unknown_operator():
    with pytest.raises(FormatError, match="'=>'"):
        satisfies("1", "=>", "1")
