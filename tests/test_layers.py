"""The import contracts declared under [tool.importlinter] in pyproject.toml hold.

They keep the loading of user-written files a stack without cycles (document <- board <-
overlay <- config), free of the pipeline, and the library free of the CLI. grimp, which
import-linter builds its graph with, counts imports inside functions too.
"""

from __future__ import annotations

import pytest
from buildutil import REPO

importlinter_cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the test extras: "
                                       "pip install -e '.[test]'")


def test_import_contracts_are_kept(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))  # this checkout's fwgen, not an installed one
    exit_code = importlinter_cli.lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True)
    assert exit_code == importlinter_cli.EXIT_STATUS_SUCCESS, capsys.readouterr().out[-3000:]
