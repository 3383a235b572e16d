"""Managers lost, locked and their credentials rotated, on a 3 manager + 1 worker lab running a stack with
a secret:
- the first manager of the inventory down: the deploy, stacks and `status` work through another manager;
- two managers of three lost (no quorum): the deploy stops before any change with the recovery procedure;
  `swarm_force_new_cluster` makes the survivor a one-manager swarm, services and secrets intact, and the
  next deploy, with the lost managers' nodes rebuilt, grows it back to three managers;
- autolock: the unlock key only in its file, restarted managers unlocked by the deploy (one, then all, then
  each in its own turn of a rolling restart);
- rotations of the join tokens, the root CA and the unlock key, once per request, nodes working throughout.
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

    def make(replicas: int = 2, settings: dict | None = None, **extra: dict) -> dict:
        return {
            "all": {
                **SWARM_ONLY,
                **(settings or {}),
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


def swarm_state(lab: Lab, node: str) -> str:
    return lab.sh(node, "docker info --format '{{.Swarm.LocalNodeState}}'").strip()


def restart(lab: Lab, docker_api: docker.APIClient, *names: str) -> None:
    """Reboot nodes (their containers restarted) and wait until Docker there is up again, locked."""
    for name in names:
        docker_api.restart(container(lab, name), timeout=30)
    lab.up("--managers", "3", "--workers", "1")  # waits for systemd and sshd
    for name in names:
        wait_for(f"{name} locked", lambda name=name: lab.ssh(name, "docker info --format '{{.Swarm.LocalNodeState}}'")
                 .stdout.strip() == "locked")  # fmt: skip


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the swarm's unlock key goes on this machine (a directory the deploy makes)."""
    return tmp_path_factory.mktemp("controller") / "keys" / "swarm-unlock-key"


def test_autolock_keeps_its_key_in_a_file_and_the_deploy_unlocks(lab: Lab, data, docker_api, key_file, tmp_path):
    locked = data(replicas=3, settings={"swarm_autolock": True, "swarm_unlock_key_file": str(key_file)})
    run = lab.deploy(group_data=locked)
    assert run.returncode == 0 and "Swarm credentials | Autolock" in run.changed, run
    key = key_file.read_text().strip()
    assert key.startswith("SWMKEY-1-") and lab.sh("manager2", "docker swarm unlock-key -q").strip() == key
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and oct(key_file.parent.stat().st_mode & 0o777) == "0o700"
    assert lab.deploy(group_data=locked).changed == []

    # One manager restarted: locked; the deploy unlocks it from the file.
    restart(lab, docker_api, "manager2")
    unlocked = lab.deploy(group_data=locked)
    assert unlocked.returncode == 0 and "Join the swarm | Unlock this manager (autolock)" in unlocked.changed, unlocked
    assert swarm_state(lab, "manager2") == "active"
    wait_for("manager2 reachable", lambda: managers(lab)["manager2"] == "reachable")

    # The key file missing: the locked manager fails with what to do; the others carry on.
    restart(lab, docker_api, "manager3")
    elsewhere = data(replicas=3, settings={"swarm_autolock": True, "swarm_unlock_key_file": str(tmp_path / "nowhere")})
    missing = lab.deploy(group_data=elsewhere)
    assert missing.returncode != 0 and failed_hosts(missing) == {"manager3"}, missing
    assert f"the unlock key file {tmp_path / 'nowhere'} doesn't exist: put the key there" in missing.output

    # Every manager restarted (as after a power cut): this run unlocks them, the next changes nothing.
    restart(lab, docker_api, "manager1", "manager2")
    everyone = lab.deploy(group_data=locked)
    assert everyone.returncode == 0, everyone
    assert "every manager reached is locked (manager1, manager2, manager3): this run unlocks them" in everyone.output
    assert {swarm_state(lab, m) for m in ("manager1", "manager2", "manager3")} == {"active"}
    wait_for("every manager reachable", lambda: set(managers(lab).values()) == {"reachable"})
    wait_for("3 sleepers", lambda: running(lab) == "3/3")
    assert lab.deploy(group_data=locked).changed == []

    # A daemon.json change that needs a restart, under autolock: each manager restarts in its own turn, comes
    # back locked and is unlocked in that turn from the key file; the rollout goes on to the next node.
    rolled = data(replicas=3, settings={"swarm_autolock": True, "swarm_unlock_key_file": str(key_file),
                                        "docker_daemon_config": {"log-driver": "json-file",
                                                                 "log-opts": {"max-size": "7m"}}})  # fmt: skip
    restarted = lab.deploy(group_data=rolled)
    assert restarted.returncode == 0, restarted
    assert restarted.output.count("draining node ") == 4 and restarted.output.count("unlocked with the key in") == 3
    assert {swarm_state(lab, m) for m in ("manager1", "manager2", "manager3")} == {"active"}
    assert set(managers(lab).values()) == {"reachable"} and running(lab) == "3/3"
    assert lab.deploy(group_data=rolled).changed == []
    for output in lab.outputs:
        assert key not in output


def test_rotations_happen_once_per_request(lab: Lab, data, key_file) -> None:
    old_key = key_file.read_text().strip()
    tokens = lab.sh("manager1", "docker swarm join-token -q worker; docker swarm join-token -q manager").split()
    trust_root = "docker info --format '{{.Swarm.Cluster.TLSInfo.TrustRoot}}'"
    old_root = lab.sh("manager1", trust_root)
    requested = data(replicas=3, settings={
        "swarm_autolock": True, "swarm_unlock_key_file": str(key_file),
        "docker_daemon_config": {"log-driver": "json-file", "log-opts": {"max-size": "7m"}},  # as autolock left it
        "swarm_rotate": dict.fromkeys(("worker_token", "manager_token", "ca", "unlock_key"), "2026-11"),
    })  # fmt: skip
    run = lab.deploy(group_data=requested)
    assert run.returncode == 0, run
    for what in ("ca", "manager_token", "unlock_key", "worker_token"):
        assert f"Swarm credentials | Rotate {what} (request 2026-11)" in run.changed, run
    new_tokens = lab.sh("manager1", "docker swarm join-token -q worker; docker swarm join-token -q manager").split()
    assert len(new_tokens) == 2 and not set(new_tokens) & set(tokens)
    assert lab.sh("manager1", trust_root) != old_root
    new_key = key_file.read_text().strip()
    assert new_key != old_key and lab.sh("manager3", "docker swarm unlock-key -q").strip() == new_key
    assert key_file.with_name("swarm-unlock-key.previous").read_text().strip() == old_key
    assert all(n["state"] == "ready" for n in nodes(lab).values()) and running(lab) == "3/3"
    assert lab.deploy(group_data=requested).changed == []  # the same requests: done already
    for output in lab.outputs:
        for secret in (*tokens, *new_tokens, old_key, new_key):
            assert secret not in output
