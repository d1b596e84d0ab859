"""Every module imports on its own, and nothing imports upward: the package's import graph has no cycle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rayif"
MODULES = sorted(
    ".".join(("rayif", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"
)


# One interpreter loads the third-party packages every module imports anyway, then forks a child per module that
# imports it with no other rayif module loaded: the same check as a fresh interpreter each, without paying
# torch's and ray's import 40 times.
_ALONE = """
import importlib, os, sys, traceback
import numpy, pyarrow, ray, torch
failed = []
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(module)
print("FAILED", failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.subprocess
def test_each_module_imports_alone():
    done = subprocess.run([sys.executable, "-c", _ALONE, *MODULES], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    assert "FAILED []" in done.stdout


@pytest.mark.subprocess
def test_a_module_that_cannot_import_alone_is_caught(tmp_path):
    """The forked check fails for a module whose import fails."""
    (tmp_path / "broken_alone.py").write_text("import rayif.no_such_module\n")
    done = subprocess.run([sys.executable, "-c", _ALONE, "rayif.config", "broken_alone"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 1 and "FAILED ['broken_alone']" in done.stdout, done.stdout + done.stderr


def _imports(module: str) -> set[str]:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            names = [f"{target}.{a.name}" for a in node.names]
            out |= {n for n in [target, *names] if n in MODULES}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
    return out - {module}


def test_no_import_cycles():
    graph = {m: _imports(m) for m in MODULES}
    # a package's __init__ re-exporting its own submodules is not a cycle of the code
    for m in graph:
        graph[m] = {d for d in graph[m] if not (d.startswith(m + ".") and PACKAGE.joinpath(*m.split(".")[1:]).is_dir())}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(d):], d]) if d in path else d)
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])


def _reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for d in graph[todo.pop()] - seen:
            seen.add(d)
            todo.append(d)
    return seen


def test_index_loads_neither_the_runner_nor_the_executors():
    graph = {m: _imports(m) for m in MODULES}
    above = {"rayif.api", "rayif.runner", "rayif.executors", "rayif.executors.ray", "rayif.executors.local"}
    for m in (m for m in MODULES if m.startswith("rayif.index")):
        assert not _reachable(m, graph) & above, f"{m} imports {sorted(_reachable(m, graph) & above)}"


def test_no_module_reads_another_modules_private_names():
    """``from rayif.x import _name`` and ``x._name`` on a rayif module: what modules share is public."""
    found = []
    for module in MODULES:
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text())
        aliases = set()  # names bound to rayif modules here: `from . import kfac`, `import rayif.x as y`
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("rayif")):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{module}:{node.lineno} imports {a.name}")
                    aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("rayif")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{module}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not found, found


def test_benchmarks_and_examples_use_only_public_names():
    found = []
    for root in ("benchmarks", "examples"):
        for path in sorted((PACKAGE.parent / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rayif"):
                    found += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")]
    assert not found, found
