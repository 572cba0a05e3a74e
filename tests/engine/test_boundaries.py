"""The package boundaries of DESIGN.md, held by tests: every import in the
source (module level or inside a function) is read with ``ast``, and the
engine is also imported for real in a fresh interpreter."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything a file imports, anywhere in it."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.add(node.module)
    return names


def offenders(folder: str, allowed: callable) -> dict[str, list[str]]:  # type: ignore[valid-type]
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        bad = sorted(name for name in imported_modules(path) if not allowed(name))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_the_engine_imports_nothing_of_the_service_the_agents_or_the_database_layer():
    forbidden = ("automl_server.", "device_agents", "latency_db", "flask", "celery", "kombu", "sqlalchemy",
                 "werkzeug", "alembic")

    def allowed(name: str) -> bool:
        return name.startswith("automl_server.engine") or not name.startswith(forbidden)

    assert offenders("automl_server/engine", allowed) == {}


def test_search_spaces_import_only_torch_and_the_standard_library():
    def allowed(name: str) -> bool:
        top = name.split(".")[0]
        return top in sys.stdlib_module_names or top in {"torch", "search_spaces", "__future__"}

    assert offenders("search_spaces", allowed) == {}


def test_device_agents_never_import_the_service():
    assert offenders("device_agents", lambda name: not name.startswith("automl_server")) == {}


def test_worker_code_never_imports_the_http_layer():
    """Stages, tasks, profiling and webhooks run in workers: they may not pull
    in Flask views (api, app, web pages)."""
    http = ("automl_server.api", "automl_server.app", "automl_server.web_pages")
    found = {}
    for folder in ("automl_server/jobs", "automl_server/engine", "automl_server/datasets", "automl_server/db"):
        found.update(offenders(folder, lambda name: not name.startswith(http)))
    for module in ("profiling.py", "webhooks.py", "celery_app.py", "worker.py"):
        path = ROOT / "automl_server" / module
        bad = sorted(n for n in imported_modules(path) if n.startswith(http))
        if bad:
            found[module] = bad
    assert found == {}


@pytest.mark.slow
def test_importing_the_engine_and_every_pipeline_loads_no_service_layer():
    code = (
        "import sys, pkgutil, importlib, automl_server.engine as e\n"
        "for m in pkgutil.walk_packages(e.__path__, 'automl_server.engine.'):\n"
        "    importlib.import_module(m.name)\n"
        "from automl_server.engine.train.registry import pipelines\n"
        "assert 'standard' in pipelines()\n"
        "bad = ('flask', 'celery', 'sqlalchemy', 'device_agents', 'latency_db', 'automl_server.jobs',\n"
        "       'automl_server.api', 'automl_server.db', 'automl_server.app')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file, so an
    import hidden inside a function still counts)."""
    modules = {}
    for path in (ROOT / package).rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in imported_modules(path):
            # "from automl_server.api import jobs" names a module too; the longest known prefix wins.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported != package:
                edges.add(imported)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["automl_server", "device_agents", "latency_db", "search_spaces"])
def test_no_import_circles_between_the_modules_of_a_package(package):
    assert cycles(import_graph(package)) == []
