"""Faults on a 1 manager + 3 worker lab: what the run reports, and that a re-run once the fault is gone
converges with no manual step. One lab for the whole suite, each fault in turn:
- during the cold deploy, while packages install: a node killed (power cut), an SSH connection dropped,
  a network cut for a few seconds;
- a worker's node stopped before a deploy;
- Docker stopped by hand on a node;
- a node rebooted between runs;
- a node's swarm state wiped;
and that a machine on the nodes' own network that is not in the inventory reaches no swarm port.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import Lab, Run, module_lab
from tests.e2e.test_swarm import SWARM_ONLY, nodes

DATA = {"all": SWARM_ONLY, "swarm_workers": {"swarm_labels": {"role": "worker"}}}


@pytest.fixture(scope="module")
def lab(lab_dir: Path, docker_api: docker.APIClient) -> Iterator[Lab]:
    yield from module_lab(lab_dir, docker_api, "e2e-faults", "--managers", "1", "--workers", "3")


def container(lab: Lab, node: str) -> str:
    return next(n["container"] for n in lab.nodes if n["node"] == node)


def wait_for(what: str, check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.5)


def healthy(lab: Lab, expected: int = 4) -> bool:
    swarm = nodes(lab)
    return len(swarm) == expected and all(n["state"] == "ready" for n in swarm.values())


def failed_hosts(run: Run) -> set[str]:
    """Hosts the run reports as failed: "[host] Error: ...", "[host] Could not connect (...)" or "[host] SSH host
    key error (...)" lines."""
    failed = set()
    for line in run.output.splitlines():
        text = line.strip()
        reasons = ("] Error", "] Could not connect", "] SSH host key error")
        if text.startswith("[") and any(reason in text.replace("]  ", "] ") for reason in reasons):
            failed.add(text[1:].split("]")[0])
    return failed


def test_faults_while_packages_install(lab: Lab, docker_api: docker.APIClient) -> None:
    """During the cold deploy, each while its packages install: worker3's node is killed (a power cut),
    worker2's SSH connection drops (its sshd session killed), worker1's network is cut for 8 s (packets to
    its SSH port dropped on this machine). Only worker3 and worker2 fail; worker1 rides it out; a re-run
    converges with no manual step."""
    result: dict[str, Run] = {}
    deploy = threading.Thread(target=lambda: result.setdefault("run", lab.deploy(group_data=DATA)))
    deploy.start()

    def installing(node: str) -> bool:
        found = docker_api.exec_start(docker_api.exec_create(container(lab, node), ["pgrep", "-x", "dpkg"])).strip()
        return bool(found)

    wait_for("worker3's dpkg to start", lambda: installing("worker3"), timeout=300)
    docker_api.kill(container(lab, "worker3"))  # a power cut, mid-install
    wait_for("worker2's dpkg to start", lambda: installing("worker2"), timeout=300)
    docker_api.exec_start(docker_api.exec_create(container(lab, "worker2"), ["pkill", "-KILL", "-f", "sshd: root"]))
    wait_for("worker1's dpkg to start", lambda: installing("worker1"), timeout=300)
    cut = ["-p", "tcp", "-d", lab.address("worker1"), "--dport", "22", "-j", "DROP"]
    subprocess.run(["iptables", "-w", "-I", "OUTPUT", *cut], check=True)
    try:
        time.sleep(8)
    finally:
        subprocess.run(["iptables", "-w", "-D", "OUTPUT", *cut], check=True)
    deploy.join()
    run = result["run"]
    assert run.returncode != 0
    assert failed_hosts(run) == {"worker3", "worker2"}, run
    assert {n: v["state"] for n, v in nodes(lab).items()} == {"manager1": "ready", "worker1": "ready"}

    lab.up("--managers", "1", "--workers", "3")  # starts the killed node again
    again = lab.deploy(group_data=DATA)
    assert again.returncode == 0, again
    wait_for("worker2 and worker3 to be Ready", lambda: healthy(lab))
    for node in ("worker2", "worker3"):
        assert lab.sh(node, "dpkg --audit").strip() == ""  # no half-configured package left
    assert lab.deploy(group_data=DATA).changed == []


def test_a_stopped_worker_fails_alone_and_joins_once_started(lab: Lab, docker_api: docker.APIClient) -> None:
    docker_api.stop(container(lab, "worker2"))
    labelled = {**DATA, "swarm_workers": {"swarm_labels": {"role": "worker", "tier": "web"}}}
    run = lab.deploy(group_data=labelled)
    assert run.returncode != 0 and failed_hosts(run) == {"worker2"}, run
    assert "worker2 is unreachable: left as it is this run" in run.output
    swarm = nodes(lab)
    assert swarm["worker1"]["labels"].get("tier") == "web" and swarm["worker3"]["labels"].get("tier") == "web"

    lab.up("--managers", "1", "--workers", "3")
    again = lab.deploy(group_data=labelled)
    assert again.returncode == 0, again
    wait_for("worker2 to be Ready", lambda: healthy(lab))
    assert nodes(lab)["worker2"]["labels"].get("tier") == "web"


def test_docker_stopped_by_hand_is_started_again(lab: Lab) -> None:
    lab.sh("worker1", "systemctl stop docker.socket docker.service")
    run = lab.deploy(group_data=DATA)
    assert run.returncode == 0, run
    assert "Install Docker | Docker is running and enabled" in run.changed
    assert lab.sh("worker1", "systemctl is-active docker").strip() == "active"
    wait_for("worker1 to be Ready again", lambda: healthy(lab))


def test_a_rebooted_node_comes_back_with_its_firewall_and_swarm(lab: Lab, docker_api: docker.APIClient) -> None:
    docker_api.restart(container(lab, "worker1"), timeout=30)
    lab.up("--managers", "1", "--workers", "3")  # waits for its systemd and sshd
    wait_for("worker1 to be Ready after its reboot", lambda: healthy(lab))
    assert "-j REJECT" in lab.sh("worker1", "iptables -S PYINFRA-SWARM")  # the firewall unit ran at boot
    assert lab.deploy(group_data=DATA).changed == []


def test_a_wiped_swarm_state_rejoins_and_its_old_entry_goes(lab: Lab) -> None:
    old = nodes(lab)["worker2"]["id"]
    lab.sh("worker2", "systemctl stop docker.socket docker.service && rm -rf /var/lib/docker/swarm && "
                      "systemctl start docker")  # fmt: skip
    run = lab.deploy(group_data=DATA)
    assert run.returncode == 0, run
    wait_for("the cluster to be whole", lambda: healthy(lab))
    swarm = nodes(lab)
    assert swarm["worker2"]["id"] != old and old not in {n["id"] for n in swarm.values()}


STRANGER = """
import socket
for address, port in {targets!r}:
    try:
        socket.create_connection((address, port), timeout=3).close()
        print(address, port, "open")
    except OSError:
        print(address, port, "closed")
"""


def test_a_stranger_on_the_lab_network_reaches_no_swarm_port(lab: Lab, docker_api: docker.APIClient) -> None:
    """A machine on the nodes' own network that is not in the inventory: SSH answers it (allowed to all),
    the swarm ports don't; a peer reaches the same ports, and 2377 only on managers."""
    image = docker_api.inspect_container(container(lab, "manager1"))["Config"]["Image"]
    network = json.loads((lab.state_dir / "lab.json").read_text())["network"]
    manager, worker = lab.address("manager1"), lab.address("worker1")
    targets = [(manager, 22), (manager, 2377), (manager, 7946), (worker, 7946)]
    stranger = docker_api.create_container(
        image, entrypoint=["python3", "-c", STRANGER.format(targets=targets)], labels={"pyinfra-swarm.lab": lab.name},
        networking_config=docker_api.create_networking_config({network: docker_api.create_endpoint_config()}),
    )  # fmt: skip
    try:
        docker_api.start(stranger)
        assert docker_api.wait(stranger, timeout=60)["StatusCode"] == 0
        seen = docker_api.logs(stranger).decode().split("\n")
    finally:
        docker_api.remove_container(stranger, force=True)
    assert seen[:4] == [f"{manager} 22 open", f"{manager} 2377 closed", f"{manager} 7946 closed",
                        f"{worker} 7946 closed"], seen  # fmt: skip
    assert lab.ssh("worker2", f"nc -z -w 3 {manager} 2377").returncode == 0
    assert lab.ssh("worker2", f"nc -z -w 3 {worker} 7946").returncode == 0
    assert lab.ssh("worker2", f"nc -z -w 3 {worker} 2377").returncode != 0  # managers only


def test_a_host_whose_key_changed_is_not_connected(lab: Lab) -> None:
    """The deploy checks host keys as the inventory's SSH settings say (the lab's: strict, its own
    known_hosts): a node answering with another key (a man in the middle, or a rebuilt machine) is not
    connected to and nothing runs on it; the others converge."""
    known = lab.state_dir / "known_hosts"
    original = known.read_text()
    worker1, worker2 = lab.address("worker1"), lab.address("worker2")
    keys = {line.split()[1]: line.split(" ", 1)[1] for line in original.splitlines() if line.startswith(worker2 + " ")}
    swapped = [f"{worker1} {keys[line.split()[1]]}" if line.startswith(worker1 + " ") else line
               for line in original.splitlines()]  # fmt: skip
    known.write_text("\n".join(swapped) + "\n")
    try:
        labelled = {**DATA, "swarm_workers": {"swarm_labels": {"role": "worker", "tier": "keys"}}}
        run = lab.deploy(group_data=labelled)
    finally:
        known.write_text(original)
    assert run.returncode != 0 and failed_hosts(run) == {"worker1"}, run
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in run.output
    assert "worker1 is unreachable: left as it is this run" in run.output
    swarm = nodes(lab)
    assert swarm.get("worker1", {"labels": {}})["labels"].get("tier") != "keys"  # not even connected to
    assert swarm["worker2"]["labels"].get("tier") == "keys"
    assert lab.deploy(group_data=labelled).returncode == 0  # the right key again
