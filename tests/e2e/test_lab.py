"""The local lab behaves like a set of fresh servers reached over SSH."""

from __future__ import annotations

import json

import docker
import pytest

from tests.conftest import cli
from tests.e2e.conftest import lab_resources

NODES = ["manager1", "worker1", "worker2", "worker3"]


def _containers(api: docker.APIClient, name: str) -> dict[str, tuple[str, str]]:
    """Container name -> (id, start time) for a lab."""
    result = {}
    for container in api.containers(all=True, filters={"label": f"pyinfra-swarm.lab={name}"}):
        started = api.inspect_container(container["Id"])["State"]["StartedAt"]
        result[container["Names"][0]] = (container["Id"], started)
    return result


def test_four_node_lab_is_reachable_distinct_and_idempotent(make_lab, docker_api):
    lab = make_lab("e2e-lab")
    lab.up("--managers", "1", "--workers", "3")
    assert [n["node"] for n in lab.nodes] == NODES

    seen: dict[str, set[str]] = {"hostname": set(), "machine-id": set(), "host key": set()}
    for node in NODES:
        result = lab.ssh(
            node,
            "systemctl is-system-running; hostname; cat /etc/machine-id; "
            "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub; "
            "command -v docker dockerd || echo no-docker; findmnt -no TARGET /var/lib/docker",
        )
        assert result.returncode == 0, result.stderr
        systemd, hostname, machine_id, host_key, docker_bin, docker_mount = result.stdout.split("\n")[:6]
        assert systemd == "running"
        assert docker_bin == "no-docker", "the node image must not ship Docker: the deploy installs it"
        assert docker_mount == "/var/lib/docker", "/var/lib/docker must be its own volume"
        seen["hostname"].add(hostname)
        seen["machine-id"].add(machine_id)
        seen["host key"].add(host_key.split()[1])
    for what, values in seen.items():
        assert len(values) == len(NODES), f"{what} is not distinct per node: {values}"

    # The non-root user has key-only SSH and password-less sudo; root has no password login.
    result = lab.ssh("worker1", "sudo -n whoami", user="debian")
    assert (result.returncode, result.stdout.strip()) == (0, "root"), result.stderr

    # pyinfra gathers facts from all four through the lab inventory, as root and as the sudo user.
    for user in ["root", "debian"]:
        result = lab.pyinfra("--json", "fact", "server.Hostname", env={"PYINFRA_SWARM_LAB_USER": user})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["server.Hostname"] == {node: f"e2e-lab-{node}" for node in NODES}

    # A second `lab up` changes nothing: same containers, not restarted.
    before = _containers(docker_api, lab.name)
    again = lab.up("--managers", "1", "--workers", "3")
    assert "creating" not in again.stderr and "starting" not in again.stderr
    assert _containers(docker_api, lab.name) == before

    # A stopped node is started again, keeping its container and its address.
    docker_api.stop(before["/pyinfra-swarm-e2e-lab-worker2"][0], timeout=30)
    again = lab.up("--managers", "1", "--workers", "3")
    assert "starting worker2" in again.stderr
    after = _containers(docker_api, lab.name)
    assert after["/pyinfra-swarm-e2e-lab-worker2"][0] == before["/pyinfra-swarm-e2e-lab-worker2"][0]
    assert lab.ssh("worker2", "systemctl is-system-running").stdout.strip() == "running"

    # A broken node (its container gone from under the lab) is recreated, keeping its /var/lib/docker volume.
    docker_api.remove_container(before["/pyinfra-swarm-e2e-lab-worker3"][0], force=True)
    again = lab.up("--managers", "1", "--workers", "3")
    assert "creating worker3" in again.stderr
    assert lab.ssh("worker3", "systemctl is-system-running").stdout.strip() == "running"

    status = cli("lab", "status", "--name", lab.name, env=lab.env)
    assert status.returncode == 0
    assert status.stdout.split("\n")[0].split() == ["NODE", "ADDRESS", "GROUP", "STATE", "SYSTEMD"]
    assert len([line for line in status.stdout.splitlines()[1:] if " running" in line]) == 4

    down = lab.down()
    assert down.returncode == 0, down.stderr
    assert lab_resources(docker_api, lab.name) == {"containers": [], "volumes": [], "networks": []}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "-1"], "--workers must be 0 or more"),
        (["--managers", "0"], "--managers must be at least 1"),
        (["--subnet", "192.168.61.0/28", "--workers", "6"], "don't fit subnet 192.168.61.0/28"),
        (["--subnet", "192.168.61.7/24"], "invalid subnet"),
        (["--name", "Bad_Name!"], "invalid lab name 'Bad_Name!'"),
    ],
)
def test_bad_input_is_refused_before_anything_is_created(make_lab, docker_api, args, message):
    lab = make_lab("e2e-bad")
    before = lab_resources(docker_api, "Bad_Name!"), lab_resources(docker_api, lab.name)
    result = cli("lab", "up", "--name", lab.name, *args, env=lab.env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyinfra-swarm: error:"), result.stderr
    assert message in lines[0]
    assert (lab_resources(docker_api, "Bad_Name!"), lab_resources(docker_api, lab.name)) == before
    assert not lab.state_dir.exists()
