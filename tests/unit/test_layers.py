"""Dependencies run one way (docs/design.md): deploys -> plan -> operations -> facts. A module that imports
against the arrows (at the top, in a function, or for type checking only) fails here, naming the import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pyinfra_swarm"
# What each part of the package may not import (prefixes of module names).
FORBIDDEN = {
    "facts": ("pyinfra_swarm.",),
    "controller": ("pyinfra_swarm.",),
    "operations": ("pyinfra_swarm.plan", "pyinfra_swarm.deploys", "pyinfra_swarm.settings", "pyinfra_swarm.lock",
                   "pyinfra_swarm.layout", "pyinfra_swarm.status", "pyinfra_swarm.cli", "pyinfra_swarm.lab"),
    "plan": ("pyinfra_swarm.deploys", "pyinfra_swarm.status", "pyinfra_swarm.cli", "pyinfra_swarm.lab"),
    "lock": ("pyinfra_swarm.plan", "pyinfra_swarm.deploys"),
    "settings": ("pyinfra_swarm.plan", "pyinfra_swarm.deploys", "pyinfra_swarm.operations"),
    "deploys": ("pyinfra_swarm.status", "pyinfra_swarm.cli", "pyinfra_swarm.lab"),
}  # fmt: skip


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if part_of(p) in FORBIDDEN)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_run_one_way(path: Path) -> None:
    wrong = [name for name in imports(path) for banned in FORBIDDEN[part_of(path)] if name.startswith(banned)]
    assert not wrong, f"{path.relative_to(PACKAGE)} imports against the layers: {', '.join(sorted(set(wrong)))}"


def test_every_part_is_checked() -> None:
    assert {part_of(p) for p in MODULES} == set(FORBIDDEN)
