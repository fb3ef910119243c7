"""Dependencies point one way: cli -> recipe/pipeline -> passes -> graph; bench, server and api
-> runtime.

Checked statically from each module's imports, so a wrong-way import fails here before it
becomes a cycle. Only `kokoro_opt.cli` may print or exit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kokoro_opt"

# For each package: the kokoro_opt packages it must never import.
FORBIDDEN: dict[str, set[str]] = {
    "graph": {"cli", "recipe", "pipeline", "passes", "runtime", "server", "bench", "report"},
    "passes": {"cli", "recipe", "pipeline", "server", "bench", "report"},
    "runtime": {"cli", "recipe", "pipeline", "passes", "server", "bench", "report", "quality"}
    | {"api"},
    "store": {"cli", "recipe", "pipeline", "passes", "server", "bench", "report"},
    "quality": {"cli", "recipe", "pipeline", "passes", "server", "bench"},
    "report": {"cli", "recipe", "pipeline", "passes", "server", "bench", "runtime"},
    "server": {"cli", "recipe", "pipeline", "passes", "bench", "api"},
    "api": {"cli", "recipe", "pipeline", "passes", "server", "bench", "report", "quality"},
    "bench": {"cli", "recipe", "pipeline", "passes", "server"},
    "recipe": {"cli"},
    "pipeline": {"cli"},
}


def _kokoro_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "kokoro_opt" and len(parts) > 1:
                found.add(parts[1])
    return found


def _modules(package: str) -> list[Path]:
    root = PACKAGE / package
    return sorted(root.rglob("*.py")) if root.is_dir() else []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    wrong = {
        f"{path.relative_to(PACKAGE)} imports kokoro_opt.{target}"
        for path in _modules(package)
        for target in _kokoro_imports(path) & FORBIDDEN[package]
    }
    assert not wrong, sorted(wrong)


def test_only_cli_prints_or_exits() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in {"cli"} or rel.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in {"print", "exit"}:
                    offenders.append(f"{rel}:{node.lineno} {func.id}()")
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr == "exit"
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "sys"
                ):
                    offenders.append(f"{rel}:{node.lineno} sys.exit()")
    assert not offenders, offenders
