"""Every module imports on its own, and nothing imports upward: the package's import graph has no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rayif"
MODULES = sorted(
    ".".join(("rayif", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"
)


def test_each_module_imports_alone():
    from concurrent.futures import ThreadPoolExecutor

    def alone(module: str) -> tuple[str, int, str]:  # a fresh interpreter: no module is loaded by another first
        done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                              timeout=300)
        return module, done.returncode, done.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=2) as pool:  # each pays torch's and ray's import: two at a time
        failed = [(m, err) for m, rc, err in pool.map(alone, MODULES) if rc != 0]
    assert not failed, failed


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
