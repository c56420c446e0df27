"""The package's import graph, read from the source with `ast`: every import counts, also one inside a function
(a function-level import can hide a loop, it cannot remove one); only imports under `if TYPE_CHECKING:` are left
out, since they never run.

- no import loop anywhere in copilot_fleet (components and smoke tests included);
- nothing the pod-side programs import, directly or through other modules and the packages they live in, is part
  of the local fleet: the CLI image installs copilot_fleet[pod], which has no supervisord;
- no module anywhere in the project imports a top-level `components` or `smoke_tests`: they exist only as
  copilot_fleet.components and copilot_fleet.smoke_tests.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "copilot_fleet"


def package_modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package (through the links to components/ and smoke_tests/)."""
    modules = {}
    for directory, subdirs, files in os.walk(ROOT / PACKAGE, followlinks=True):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = Path(directory) / name
                parts = path.relative_to(ROOT).with_suffix("").parts
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere but the body of an `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from (i for child in node.orelse for i in _imports_in(child))
            continue
        yield from _imports_in(node)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def imported_modules(module: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of the package that `module` imports. `from a import b` imports a.b if that is a module, else
    the name b of module a. (Importing a.b runs package a's __init__ first; that is not counted as an import of a
    by this module, or every package whose __init__ imports its own modules would be a loop.)"""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != module}


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports."""
    modules = package_modules()
    return {m: imported_modules(m, p, set(modules)) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module that importing `start` may import: its imports, theirs, and the packages each lives in (Python
    runs a package's __init__ before any module in it)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        todo += [m for m in graph[module] | (parents & graph.keys()) if m not in seen]
    return seen


def test_the_graph_sees_what_it_should() -> None:
    """The reader itself: function-level imports count, TYPE_CHECKING ones do not, relative imports resolve."""
    graph = import_graph()
    assert "copilot_fleet.components.kubernetes" in graph["copilot_fleet.program"]  # inside a function
    assert "copilot_fleet.client.lease" in graph["copilot_fleet.pod.janitor"]  # inside a function
    assert "copilot_fleet.client.fleet_client" not in graph["copilot_fleet.client.cap"]  # TYPE_CHECKING only
    assert "copilot_fleet.client.errors" in graph["copilot_fleet.client.ids"]  # `from .errors import`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_loops() -> None:
    loops = cycles(import_graph())
    assert not loops, "import loops (each line: the modules of one loop):\n" + "\n".join(map(", ".join, loops))


@pytest.mark.parametrize("program", ["health", "drain", "janitor", "wear", "procfs", "ports"])
def test_no_pod_side_program_reaches_the_local_fleet(program: str) -> None:
    graph = import_graph()
    start = f"{PACKAGE}.pod.{program}"
    local = sorted(m for m in reachable(graph, start) if m == f"{PACKAGE}.local" or m.startswith(f"{PACKAGE}.local."))
    assert not local, f"{start} imports the local fleet: {local}"
    heavy = sorted(m for m in reachable(graph, start) if m.startswith((f"{PACKAGE}.components", f"{PACKAGE}.render")))
    assert not heavy, f"{start} imports Pulumi code the CLI image does not have: {heavy}"


def project_sources() -> Iterator[Path]:
    for top in ("copilot_fleet", "components", "smoke_tests", "tests", "faults", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in path.parts:
                yield path
    yield ROOT / "__main__.py"


def test_components_and_smoke_tests_are_imported_only_from_inside_the_package() -> None:
    offenders = []
    for path in project_sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if not node.level else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                          if name.split(".")[0] in ("components", "smoke_tests")]
    assert not offenders, "import copilot_fleet.components / copilot_fleet.smoke_tests instead:\n" + "\n".join(
        offenders)
