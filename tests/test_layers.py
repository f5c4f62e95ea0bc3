"""The import contracts declared under [tool.importlinter] in pyproject.toml hold, and fwgen
has no import cycle at all.

The contracts keep the loading of user-written files a stack without cycles (document <-
board <- overlay <- config), free of the pipeline, and the library free of the CLI. grimp,
which import-linter builds its graph with, counts imports inside functions and under
TYPE_CHECKING too, so hiding an import there does not get round either check.
"""

from __future__ import annotations

import pytest
from buildutil import REPO

grimp = pytest.importorskip("grimp", reason="import-linter (which brings grimp) is in the test extras: "
                            "pip install -e '.[test]'")
importlinter_cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the test extras: "
                                       "pip install -e '.[test]'")


def test_import_contracts_are_kept(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))  # this checkout's fwgen, not an installed one
    exit_code = importlinter_cli.lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True)
    assert exit_code == importlinter_cli.EXIT_STATUS_SUCCESS, capsys.readouterr().out[-3000:]


def import_cycles(graph) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module: a module's
    component is what it imports, directly or not, that also imports it."""
    cycles: list[list[str]] = []
    seen: set[str] = set()
    for module in sorted(graph.modules):
        if module in seen:
            continue
        component = graph.find_upstream_modules(module) & graph.find_downstream_modules(module)
        if component:
            cycles.append(sorted(component | {module}))
            seen |= component
    return cycles


def test_fwgen_has_no_import_cycle(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    assert import_cycles(grimp.build_graph("fwgen", cache_dir=None)) == []


def test_a_cycle_is_found_through_every_module_in_it():
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.e", "p.d")]:
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph) == [["p.a", "p.b", "p.c"]]
