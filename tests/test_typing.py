"""mypy runs as part of the test suite (STYLE.md): a type error fails the build like a test.

The configuration is [tool.mypy] in pyproject.toml; the cache goes to pytest's tmp folder, so
a run leaves nothing in the checkout.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from buildutil import REPO

pytest.importorskip("mypy", reason="mypy is in the test extras: pip install -e '.[test]'")


def test_mypy_finds_nothing(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "mypy-cache"
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "fwgen"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
