"""The layers a newcomer reads in the package docstrings, checked by machine.

    promptroute            the CLI and the in-process API
    training | serving     beside each other: neither imports the other
    models                 the runtime model: catalog, artifacts, the request-time Router
    features               prompt normalisation and the feature extractor

The contracts live in pyproject.toml ([tool.importlinter]); inside `serving/` the import graph
must have no cycle, so each module can be read after the ones it imports.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import grimp
import pytest

PACKAGES = ("features", "models", "training", "serving", "promptroute")


def test_import_linter_contracts_are_kept() -> None:
    # In a child process: import-linter reconfigures logging, which other tests read.
    code = "import sys; from importlinter import cli; sys.exit(cli.lint_imports(no_cache=True))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.mark.parametrize("package", ["serving", "models", "training", "features"])
def test_no_import_cycles_inside(package: str) -> None:
    graph = grimp.build_graph(package, cache_dir=None)
    modules = graph.find_children(package) | graph.find_descendants(package)
    edges = {
        m: {d for d in graph.find_modules_directly_imported_by(m) if d in modules} for m in modules
    }
    assert _cycles(edges) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_says_what_it_holds_and_may_import(package: str) -> None:
    doc = importlib.import_module(package).__doc__ or ""
    assert "import" in doc.lower(), f"{package}/__init__.py: say what it may import"


def test_promptroute_api_is_exact() -> None:
    import promptroute

    assert promptroute.__all__ == ["Decision", "PromptRouter", "RoutingError"]
    for name in promptroute.__all__:
        assert getattr(promptroute, name).__name__ == name
    with pytest.raises(AttributeError):
        promptroute.Router  # noqa: B018 - the attribute access is the test


def test_cli_parsing_imports_no_model_or_server_code() -> None:
    """`promptroute --help` answers without scikit-learn, numpy or the server."""
    code = (
        "import sys; from promptroute import cli; cli.build_parser(); "
        "heavy = sorted(m for m in ('sklearn', 'numpy', 'fastapi', 'serving', 'training') "
        "if m in sys.modules); print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
