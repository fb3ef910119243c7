"""Dependencies point one way: cli -> recipe -> trials -> measure/bench -> passes -> graph;
bench, server and api -> runtime; report and gates are pure.

Checked statically from each module's imports, so a wrong-way import fails here before it
becomes a cycle. Every package (and top-level module) of kokoro_opt has a rule: the kokoro_opt
packages it may import. A new package fails `test_every_package_has_a_rule` until it gets one.
Only `kokoro_opt.cli` may print or exit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kokoro_opt"

_BASE = {"errors"}
# For each package: the kokoro_opt packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "graph": _BASE,
    "report": _BASE,
    "runtime": _BASE | {"graph"},  # graph.durations: the durations output for timestamps
    "coreml": _BASE,
    "gates": _BASE | {"report"},
    "store": _BASE | {"graph"},
    "quality": _BASE | {"runtime"},
    "calib": _BASE | {"runtime", "store"},
    "server": _BASE | {"runtime", "store"},  # store: verified model loads
    "api": _BASE | {"runtime", "store"},
    "passes": _BASE | {"graph", "runtime", "calib", "quality"},
    "measure": _BASE | {"graph", "runtime", "quality", "calib", "report", "store"},
    "bench": _BASE | {"graph", "runtime", "quality", "report", "measure"},
    "trials": _BASE
    | {"graph", "runtime", "quality", "calib", "report", "passes", "bench", "measure"},
    "recipe": _BASE
    | {
        "graph",
        "runtime",
        "quality",
        "calib",
        "report",
        "store",
        "passes",
        "measure",
        "bench",
        "gates",
    },
    "cli": {p.stem for p in PACKAGE.iterdir() if p.name != "__main__.py"} - {"cli"},
    "__main__": {"cli"},
    "__init__": {"api"},  # `from kokoro_opt import Kokoro`, imported lazily
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
    if root.is_dir():
        return sorted(root.rglob("*.py"))
    module = PACKAGE / f"{package}.py"
    return [module] if module.is_file() else []


def _packages() -> set[str]:
    return {
        p.stem
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").is_file()) or p.suffix == ".py"
    }


def test_every_package_has_a_rule() -> None:
    assert _packages() == set(ALLOWED), (
        f"no rule for {sorted(_packages() - set(ALLOWED))}; "
        f"rules for missing packages {sorted(set(ALLOWED) - _packages())}"
    )


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    allowed = ALLOWED[package] | {package}
    wrong = {
        f"{path.relative_to(PACKAGE)} imports kokoro_opt.{target}"
        for path in _modules(package)
        for target in _kokoro_imports(path) - allowed
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
