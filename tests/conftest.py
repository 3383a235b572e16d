"""Shared helpers: run the CLI and pyinfra from the project's venv, and talk to the Docker engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(command: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command from the project root; output is captured as text."""
    return subprocess.run(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run([str(BIN / "pyinfra-swarm"), *args], env=env)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/e2e need the Docker engine, tests under tests/vagrant the vagrant command, tests under
    tests/vm QEMU and root (and the engine, which builds the demo's base image)."""
    for item in items:
        for folder in ("e2e", "vagrant", "vm"):
            if f"tests/{folder}/" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory of the test session's own, so tests never touch the user's labs."""
    return tmp_path_factory.mktemp("labs")
