"""The layering of ``service``, checked on the source: which subpackage may import which at
module level, no import cycle between modules of different subpackages, and every module of
the lower layers importable on its own (an import cycle shows up as a failure there).

Layers, bottom up: ``algorithms`` and ``io`` (nothing from the service), ``backends`` (the
algorithms), ``settings``, ``engine`` (backends, algorithms, io, settings), ``export`` /
``datasets``, ``api``, and the entry points on top (app, cli, commands, client, evaluation).
Imports inside functions (optional dependencies, lazy command imports) and under
``TYPE_CHECKING`` are not module-level and are not counted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "service"

#: what each lower layer may import from the service (besides itself); None: unchecked
ALLOWED: dict[str, set[str]] = {
    "algorithms": set(),
    "io": set(),
    "backends": {"algorithms"},
    "settings": {"algorithms", "backends", "encoders"},
    "engine": {"algorithms", "backends", "io", "settings"},
    "export": {"algorithms", "backends", "io", "settings"},
    "datasets": {"algorithms", "io", "settings"},
    "remote": {"algorithms", "backends", "engine", "export", "io", "settings"},
    "serving": {"engine", "remote", "settings"},
    "api": {
        "algorithms",
        "backends",
        "engine",
        "remote",
        "serving",
        "settings",
        "encoders",
        "logs",
        "service",
    },
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _unit(module: str) -> str:
    """The subpackage (or top-level module) of ``module``: ``service.engine.state`` → engine."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "service"


def _imports(path: Path) -> set[str]:
    """Service modules imported at module level (``from a import b``: ``a.b`` if a module)."""
    found: set[str] = set()

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "service")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in MODULES else node.module)  # type: ignore[arg-type]
            elif isinstance(node, ast.If | ast.Try | ast.With):
                walk(node.body)
                walk(getattr(node, "orelse", []))

    walk(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


GRAPH = {module: _imports(path) for module, path in MODULES.items()}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_below_it(layer: str) -> None:
    wrong = {
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _unit(module) == layer
        for target in targets
        if _unit(target) not in ALLOWED[layer] | {layer}
    }
    assert not wrong, sorted(wrong)


def test_no_import_cycle_between_subpackages() -> None:
    """Subpackages form a DAG (cycles inside one subpackage, a package and its own modules,
    are Python's ordinary package structure)."""
    units: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        units[_unit(module)].update(_unit(t) for t in targets if _unit(t) != _unit(module))
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(unit: str) -> None:
        state[unit] = 1
        path.append(unit)
        for target in sorted(units[unit]):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join([*path[path.index(target) :], target]))
            if target not in state:
                visit(target)
        path.pop()
        state[unit] = 2

    for unit in sorted(units):
        if unit not in state:
            visit(unit)


ALONE = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "service" or m.startswith("service.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {exc!r}")
print("\\n".join(failed))
"""


def test_lower_layer_modules_import_alone() -> None:
    """Each module of algorithms, io, backends and export, imported first in a fresh module
    table: an import cycle (e.g. export ↔ backends) would fail one of them."""
    names = [m for m in MODULES if _unit(m) in {"algorithms", "io", "backends", "export"}]
    done = subprocess.run(
        [sys.executable, "-c", ALONE, *names], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert not done.stdout.strip(), done.stdout
