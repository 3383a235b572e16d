"""Losing managers on a 3 manager + 1 worker lab running a stack with a secret:
- the first manager of the inventory down: the deploy, stacks and `status` work through another manager;
- two managers of three lost (no quorum): the deploy stops before any change with the recovery procedure;
  `swarm_force_new_cluster` makes the survivor a one-manager swarm, services and secrets intact, and the
  next deploy, with the lost managers' nodes rebuilt, grows it back to three managers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import cli
from tests.e2e.conftest import Lab, module_lab
from tests.e2e.test_faults import container, failed_hosts, wait_for
from tests.e2e.test_swarm import SWARM_ONLY, nodes

STACK = """version: "3.8"
services:
  sleeper:
    image: debian:bookworm
    command: ["sleep", "infinity"]
    secrets: [keep_secret]
    deploy:
      replicas: {{ replicas }}
      placement:
        constraints: ["node.role == worker"]
secrets:
  keep_secret:
    external: true
    name: "{{ secrets.keep_secret }}"
"""


@pytest.fixture(scope="module")
def lab(lab_dir: Path, docker_api: docker.APIClient) -> Iterator[Lab]:
    yield from module_lab(lab_dir, docker_api, "e2e-managers", "--managers", "3", "--workers", "1")


@pytest.fixture(scope="module")
def data(lab: Lab, lab_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Group data: the swarm, the lab's base image loaded on the worker, a secret from a file and a stack
    that uses it; `replicas` and `extra` (more group data) vary per run."""
    folder = tmp_path_factory.mktemp("managers")
    (folder / "keep.yml.j2").write_text(STACK)
    (folder / "keep_secret").write_text("kept-through-the-recovery")

    def make(replicas: int = 2, **extra: dict) -> dict:
        return {
            "all": {
                **SWARM_ONLY,
                "docker_image_archives": [{"image": "debian:bookworm", "group": "swarm_workers",
                                           "archive": str(lab_dir / "images" / "debian-bookworm.tar")}],
                "swarm_secrets": {"keep_secret": {"file": str(folder / "keep_secret")}},
                "swarm_stacks_dir": str(folder),
                "swarm_stacks": [{"name": "keep", "template": "keep.yml.j2", "timeout": 120,
                                  "vars": {"replicas": replicas}}],
            },
            **extra,
        }  # fmt: skip

    cold = lab.deploy(group_data=make())
    assert cold.returncode == 0, cold
    return make


def managers(lab: Lab, through: str = "manager1") -> dict[str, str]:
    """Manager hostname -> its reachability, as `through` sees it."""
    return {n: v["reachability"] for n, v in nodes(lab, through).items() if v["role"] == "manager"}


def running(lab: Lab, through: str = "manager1") -> str:
    return lab.sh(through, "docker service ls --filter name=keep_sleeper --format '{{.Replicas}}'").strip()


def test_the_first_manager_down_deploys_and_reports_through_another(lab: Lab, data, docker_api) -> None:
    docker_api.stop(container(lab, "manager1"), timeout=30)
    labelled = data(replicas=3, swarm_workers={"swarm_labels": {"tier": "batch"}})
    run = lab.deploy(group_data=labelled)
    assert run.returncode != 0 and failed_hosts(run) == {"manager1"}, run
    assert "manager1 is unreachable: left as it is this run" in run.output
    assert nodes(lab, "manager2")["worker1"]["labels"].get("tier") == "batch"  # through manager2
    wait_for("3 sleepers", lambda: running(lab, "manager2") == "3/3")

    status = cli("status", "inventory/lab.py", "--json", env=lab.env)
    report = json.loads(status.stdout)
    assert status.returncode == 1 and report["through"] == "manager2", status.stdout + status.stderr
    assert report["quorum"] == {"managers": 3, "reachable": 2, "needed": 2, "tolerates": 0}, report["quorum"]
    assert any("manager1" in problem for problem in report["problems"]), report["problems"]

    lab.up("--managers", "3", "--workers", "1")  # manager1 back
    again = lab.deploy(group_data=labelled)
    assert again.returncode == 0, again
    wait_for("every manager reachable", lambda: set(managers(lab).values()) == {"reachable"})


def test_quorum_lost_then_recovered_on_the_survivor(lab: Lab, data, docker_api) -> None:
    before = running(lab)
    for node in ("manager2", "manager3"):
        docker_api.stop(container(lab, node), timeout=30)

    stopped = lab.deploy(group_data=data(replicas=3))
    assert stopped.returncode != 0
    assert "no manager of the swarm can list its nodes" in stopped.output, stopped
    assert "set swarm_force_new_cluster: true on one of the managers reached" in stopped.output
    assert "Beginning operation run" not in stopped.output  # nothing ran

    recovering = data(replicas=3, swarm_managers={"swarm_force_new_cluster": True})
    recovered = lab.deploy(group_data=recovering)
    assert recovered.returncode != 0 and failed_hosts(recovered) == {"manager2", "manager3"}, recovered
    assert "quorum is lost: manager1 becomes a one-manager swarm" in recovered.output
    assert "Join the swarm | Recover the swarm: a one-manager swarm here" in recovered.changed
    assert lab.sh("manager1", "docker info --format '{{.Swarm.Managers}}'").strip() == "1"  # a one-manager swarm
    assert managers(lab)["manager1"] == "reachable" and nodes(lab)["manager1"]["leader"]
    assert running(lab) == before  # the services went on running through all of it
    assert lab.sh("manager1", "docker secret ls --format '{{.Name}}'").startswith("keep_secret_")

    # The lost managers' machines are rebuilt from scratch (same names and addresses, no swarm state).
    for node in ("manager2", "manager3"):
        info = docker_api.inspect_container(container(lab, node))
        docker_api.remove_container(info["Id"], force=True)
        for mount in info["Mounts"]:
            if mount["Type"] == "volume":
                docker_api.remove_volume(mount["Name"], force=True)
    lab.up("--managers", "3", "--workers", "1")
    grown = lab.deploy(group_data=recovering)
    assert grown.returncode == 0, grown
    assert "swarm_force_new_cluster is set for manager1, manager2, manager3 but the swarm has a leader" in grown.output
    wait_for("three reachable managers", lambda: managers(lab) == dict.fromkeys(("manager1", "manager2", "manager3"),
                                                                                "reachable"))  # fmt: skip
    assert len(nodes(lab)) == 4  # the lost managers' old entries are gone
    assert running(lab, "manager3") == "3/3"
    assert lab.deploy(group_data=data(replicas=3)).changed == []
