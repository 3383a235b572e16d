"""The node lifecycle on a 3 manager + 2 worker Debian 14 lab running the demo, Docker 26.1 (Debian 13's,
pinned; the nodes have trixie as a second apt source, as an operator would add it), with a client on this
machine asking the demo's web port on both workers throughout (one of them always answers):
- OS patching (`patch.py`) limited to a manager and a worker, each with an older package and asking for a
  reboot: both upgraded and rebooted (a reboot is the node's container restarting), one at a time, the engine
  left at 26.1 although 28.5 is offered, the firewall in force again; the node outside the limit untouched; a
  second run changes nothing. Then a node whose firewall fails at boot: the run stops there, the node stays
  drained, and the next run gives it back.
- A rolling engine upgrade from 26.1 to 28.5 (Debian 14's), across Docker 28.0's rewrite of its iptables
  chains: each worker down for no longer than its own turn; after it, the firewall still lets this machine (no
  peer) in on the allowed port only."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import Lab, Run, module_lab
from tests.e2e.test_stacks import DEMO_VARS, stacks, wait_running
from tests.e2e.test_swarm import can_connect, nodes

NODES = ("manager1", "manager2", "manager3", "worker1", "worker2")
TRIXIE = "Types: deb\nURIs: {mirror}\nSuites: trixie\nComponents: main\n"


def answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:8080/", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def longest_gap(samples: list[tuple[float, bool]]) -> float:
    """The longest time the samples (time, answered) show no answer."""
    longest, since = 0.0, None
    for at, ok in samples:
        if not ok and since is None:
            since = at
        elif ok and since is not None:
            longest, since = max(longest, at - since), None
    if since is not None:
        longest = max(longest, samples[-1][0] - since)
    return longest


@dataclass
class Cluster:
    lab: Lab
    data: dict[str, Any]
    old: str
    new: str
    before: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def cluster(lab_dir, docker_api, tmp_path_factory) -> Iterator[Cluster]:
    """The lab, on 26.1 with the demo (two web replicas) and trixie's packages offered beside forky's."""
    for lab in module_lab(lab_dir, docker_api, "e2e-upgrade", "--managers", "3", "--workers", "2",
                          "--distro", "forky"):  # fmt: skip
        mirror = lab.sh("worker1", "grep -rhoE 'https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ | "
                                   "head -1")  # fmt: skip
        for node in NODES:
            lab.sh(node, f"printf '{TRIXIE.format(mirror=mirror.strip())}' > /etc/apt/sources.list.d/trixie.sources"
                         " && apt-get update -q >/dev/null")  # fmt: skip
        madison = lab.sh("worker1", "apt-cache madison docker.io")
        versions = {
            line.split("|")[2].split()[1].split("/")[0]: line.split("|")[1].strip() for line in madison.splitlines()
        }
        old, new = versions["trixie"], versions["forky"]
        assert old.startswith("26.") and new.startswith("28."), versions
        templates = tmp_path_factory.mktemp("upgrade") / "stacks"
        shutil.copytree(ROOT / "templates" / "stacks", templates)
        data = stacks(templates, demo_vars={**DEMO_VARS, "web_replicas": 2})
        data["all"]["docker_version"] = old
        cold = lab.deploy(group_data=data)
        assert cold.returncode == 0, cold
        before = nodes(lab)
        assert len(before) == 5
        assert lab.sh("worker2", "docker version --format '{{.Server.Version}}'").startswith("26.")
        yield Cluster(lab, data, old, new, before)


def with_client(lab: Lab, action: Callable[[], Run]) -> tuple[Run, dict[str, list[tuple[float, bool]]], float]:
    """Run `action` while a client asks both workers' web port every 0.3 s: its run, the samples per worker
    (time, answered), and how long it took."""
    samples: dict[str, list[tuple[float, bool]]] = {"worker1": [], "worker2": []}
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            for worker in samples:
                samples[worker].append((time.monotonic(), answers(lab.address(worker))))
            time.sleep(0.3)

    poller = threading.Thread(target=client)
    poller.start()
    started = time.monotonic()
    try:
        result = action()
    finally:
        done.set()
        poller.join()
    return result, samples, time.monotonic() - started


def both(samples: dict[str, list[tuple[float, bool]]]) -> list[tuple[float, bool]]:
    """The samples as one client that asks both workers sees them."""
    return [(t, a or b) for (t, a), (_, b) in zip(samples["worker1"], samples["worker2"], strict=False)]


def booted(lab: Lab, node: str) -> str:
    return lab.sh(node, "cut -d' ' -f22 /proc/1/stat").strip()


def test_os_patching_one_node_at_a_time_with_reboots(cluster: Cluster) -> None:
    lab, data = cluster.lab, cluster.data
    old_less = lab.sh("worker1", "apt-cache madison less | awk '/trixie/ {print $3; exit}'").strip()
    for node in ("manager2", "worker1", "worker2"):
        lab.sh(node, f"apt-get install -y -q --allow-downgrades less={old_less} >/dev/null 2>&1")
    for node in ("manager2", "worker1"):
        lab.sh(node, "touch /var/run/reboot-required")
    lab.sh("worker1", "apt-mark unhold docker.io docker-cli >/dev/null")  # the engine kept by patching itself
    boots = {node: booted(lab, node) for node in NODES}

    patched, samples, took = with_client(
        lab, lambda: lab.deploy("--limit", "manager2", "--limit", "worker1", group_data=data, file="patch.py")
    )
    assert patched.returncode == 0, patched
    print(f"patching took {took:.0f} s; longest gap with no answer: {longest_gap(both(samples)):.1f} s")
    assert longest_gap(both(samples)) < 3, patched  # one of the workers answered throughout
    for node in ("manager2", "worker1"):
        assert booted(lab, node) != boots[node], node  # rebooted
        assert lab.sh(node, "dpkg-query -W -f '${Version}' less") != old_less, node
        assert f"{node}: 1 package(s) upgraded, rebooted (/var/run/reboot-required)" in patched.output
    assert {node: booted(lab, node) for node in ("manager1", "manager3", "worker2")} == {
        node: boots[node] for node in ("manager1", "manager3", "worker2")
    }
    assert lab.sh("worker2", "dpkg-query -W -f '${Version}' less") == old_less  # outside the limit
    for node in NODES:
        assert lab.sh(node, "docker version --format '{{.Server.Version}}'").startswith("26."), node
    turns = [line for line in patched.output.splitlines() if "its turn:" in line]
    assert [line.split("]")[0].strip(" [") for line in turns] == ["manager2", "worker1"], turns
    swarm = nodes(lab)
    assert all(n["state"] == "ready" and n["availability"] == "active" for n in swarm.values()), swarm
    managers = [n for n in swarm.values() if n["role"] == "manager"]
    assert all(m["reachability"] == "reachable" for m in managers) and sum(m["leader"] for m in managers) == 1
    # The firewall is in force again after the reboot: this machine (no peer) is refused on the swarm's port.
    assert not can_connect(lab.address("worker1"), 7946) and answers(lab.address("worker1"))
    again = lab.deploy("--limit", "manager2", "--limit", "worker1", group_data=data, file="patch.py")
    assert again.returncode == 0 and again.changed == [], again

    # worker2's firewall fails at its next boot: it stays drained, the run stops there and names it.
    lab.sh("worker2", "mkdir -p /etc/systemd/system/pyinfra-swarm-firewall.service.d && printf "
                      "'[Service]\\nExecStart=\\nExecStart=/bin/false\\n' > "
                      "/etc/systemd/system/pyinfra-swarm-firewall.service.d/broken.conf && systemctl daemon-reload "
                      "&& touch /var/run/reboot-required")  # fmt: skip
    failed = lab.deploy("--limit", "worker2", group_data=data, file="patch.py")
    assert failed.returncode != 0 and "its firewall (pyinfra-swarm-firewall.service) was not active" in failed.output
    assert "worker2: FAILED" in failed.output, failed
    assert nodes(lab)["worker2"]["availability"] == "drain"
    lab.sh("worker2", "rm -r /etc/systemd/system/pyinfra-swarm-firewall.service.d && systemctl daemon-reload && "
                      "systemctl restart pyinfra-swarm-firewall.service")  # fmt: skip
    fixed = lab.deploy("--limit", "worker2", group_data=data, file="patch.py")
    assert fixed.returncode == 0, fixed
    assert nodes(lab)["worker2"]["availability"] == "active"
    wait_running(lab, "demo_web")


def test_a_rolling_upgrade_from_docker_26_1_to_28_5(cluster: Cluster) -> None:
    lab, data, new, before = cluster.lab, cluster.data, cluster.new, cluster.before
    data["all"]["docker_version"] = new
    upgraded, samples, took = with_client(lab, lambda: lab.deploy(group_data=data))
    assert upgraded.returncode == 0, upgraded
    turns = [line for line in upgraded.output.splitlines() if "drained" in line.lower()]
    gaps = {worker: longest_gap(s) for worker, s in samples.items()}
    print(f"upgrade took {took:.0f} s; longest gap with no answer: {longest_gap(both(samples)):.1f} s; {gaps}")
    assert longest_gap(both(samples)) < 3, (gaps, turns)  # one of the workers answered throughout
    assert all(gap < took / 3 for gap in gaps.values()), (gaps, took)  # each only during its own turn

    swarm = nodes(lab)
    assert set(swarm) == set(NODES) and all(n["state"] == "ready" for n in swarm.values())
    assert {n["id"] for n in swarm.values()} == {n["id"] for n in before.values()}  # the same nodes
    for node in NODES:
        assert lab.sh(node, "docker version --format '{{.Server.Version}}'").startswith(new.split("+")[0]), node
    managers = [n for n in swarm.values() if n["role"] == "manager"]
    assert all(m["reachability"] == "reachable" for m in managers) and sum(m["leader"] for m in managers) == 1
    wait_running(lab, "demo_web")
    # Docker 28's chains: published ports still pass our filter from DOCKER-USER. This machine is no peer: the
    # demo's port (in the allow list) answers, the registry's (not in it) is refused.
    assert answers(lab.address("worker1")) and not can_connect(lab.address("manager1"), 5000)
    assert lab.deploy(group_data=data).changed == []  # the version in place: nothing to do
