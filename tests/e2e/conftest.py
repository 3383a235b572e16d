"""End-to-end fixtures: labs of the tests' own names on the real Docker engine, removed afterwards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pyinfra_swarm.lab import state
from tests.conftest import BIN, ROOT, cli, run


@pytest.fixture(scope="session")
def docker_api() -> docker.APIClient:
    """The engine the labs run on. No engine is a failure, not a skip: `make test` starts one."""
    return docker.APIClient(version="auto")


def lab_resources(api: docker.APIClient, name: str) -> dict[str, list[str]]:
    label = f"pyinfra-swarm.lab={name}"
    return {
        "containers": [c["Id"] for c in api.containers(all=True, filters={"label": label})],
        "volumes": [v["Name"] for v in api.volumes(filters={"label": label}).get("Volumes") or []],
        "networks": [n["Id"] for n in api.networks(filters={"label": label})],
    }


class Run:
    """A pyinfra run: its exit code, output, and the operations its results table reports as changed."""

    def __init__(self, result: subprocess.CompletedProcess) -> None:
        self.returncode = result.returncode
        self.output = result.stdout + result.stderr

    def hosts_changed(self, operation: str) -> int:
        """How many hosts the operation called `operation` changed (its results row's Success column)."""
        for row in self.output.split("--> Results:")[-1].splitlines():
            columns = re.split(r"\s{2,}", row.strip())
            if len(columns) == 5 and columns[0] == operation:
                return 0 if columns[2] == "-" else int(columns[2])
        return 0

    @property
    def changed(self) -> list[str]:
        rows = self.output.split("--> Results:")[-1].splitlines()
        changed = []
        for row in rows:
            columns = re.split(r"\s{2,}", row.strip())
            if len(columns) == 5 and columns[0] not in ("Operation", "Grand total") and columns[2] != "-":
                changed.append(columns[0])
        return changed

    def __repr__(self) -> str:
        errors = [line for line in self.output.splitlines() if "rror" in line or "arning" in line][:40]
        return f"Run(returncode={self.returncode}, errors={errors}, output=...{self.output[-3000:]})"


class Lab:
    """A lab brought up through the CLI, with helpers to reach its nodes the way a user would."""

    def __init__(self, name: str, lab_dir: Path) -> None:
        self.name = name
        self.state_dir = lab_dir / name
        self.env = {
            "PYINFRA_SWARM_LAB": name,
            "PYINFRA_SWARM_LAB_DIR": str(lab_dir),
            "PYINFRA_SWARM_PKI_DIR": str(lab_dir / name / "pki"),  # the lab's own CA and registry password
        }
        self.outputs: list[str] = []  # everything the deploys printed, to check for secrets

    def up(self, *args: str) -> subprocess.CompletedProcess:
        result = cli("lab", "up", "--name", self.name, *args, env=self.env)
        assert result.returncode == 0, result.stderr
        return result

    def down(self) -> subprocess.CompletedProcess:
        return cli("lab", "down", "--name", self.name, env=self.env)

    @property
    def nodes(self) -> list[dict[str, str]]:
        return json.loads((self.state_dir / "lab.json").read_text())["nodes"]

    def address(self, node: str) -> str:
        return next(n["address"] for n in self.nodes if n["node"] == node)

    def sh(self, node: str, command: str) -> str:
        """Run a command on a node as root; fail the test if it fails."""
        result = self.ssh(node, command)
        assert result.returncode == 0, f"{node}: {command}: {result.stderr}"
        return result.stdout

    def ssh(self, node: str, command: str, user: str = "root") -> subprocess.CompletedProcess:
        return run(
            [*state.ssh_command(self.state_dir, user, self.address(node)), command],
            timeout=120,
        )

    def deploy(self, *args: str, group_data: dict | None = None, inventory: str = "inventory/lab.py",
               env: dict[str, str] | None = None, file: str = "deploy.py") -> Run:  # fmt: skip
        """Run deploy.py (or `file`) on the lab; `group_data` ({group: {key: value}}) overrides the repo's
        group_data."""
        command = [str(BIN / "pyinfra"), "-y", *args]
        if group_data:
            folder = self.state_dir / "group_data"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for group, values in group_data.items():
                (folder / f"{group}.py").write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
            command += ["--group-data", str(folder)]
        result = run([*command, inventory, file], env={**self.env, **(env or {})})
        self.outputs.append(result.stdout + result.stderr)
        return Run(result)

    def pyinfra(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run([str(BIN / "pyinfra"), "-y", "inventory/lab.py", *args], env={**self.env, **(env or {})})


def module_lab(lab_dir: Path, docker_api: docker.APIClient, name: str, *up_args: str) -> Iterator[Lab]:
    """For a fixture of a module's shared lab: brought up fresh (a leftover of an interrupted run removed
    first), taken down afterwards and checked gone."""
    lab = Lab(name, lab_dir)
    lab.down()
    lab.up(*up_args)
    yield lab
    take_down(lab, docker_api)


def take_down(lab: Lab, docker_api: docker.APIClient) -> None:
    """Remove a test's lab and check that nothing of it is left on the engine."""
    result = lab.down()
    assert result.returncode == 0, result.stderr
    assert lab_resources(docker_api, lab.name) == {"containers": [], "volumes": [], "networks": []}


@pytest.fixture
def make_lab(lab_dir: Path, docker_api: docker.APIClient) -> Iterator:
    """Factory for labs named `e2e-...`; each is taken down (and checked gone) after the test."""
    labs: list[Lab] = []

    def factory(name: str) -> Lab:
        lab = Lab(name, lab_dir)
        lab.down()  # a lab of this test's name left over by an interrupted run
        labs.append(lab)
        return lab

    yield factory
    for lab in labs:
        take_down(lab, docker_api)


__all__ = ["ROOT", "Lab", "lab_resources", "module_lab"]
