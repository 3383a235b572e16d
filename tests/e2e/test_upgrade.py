"""A rolling engine upgrade between two real engine versions from Debian's mirror, on a 3 manager + 2 worker
Debian 14 lab running the demo: docker.io 26.1 (Debian 13's, pinned; the nodes have trixie as a second apt
source, as an operator would add it) to 28.5 (Debian 14's), across Docker 28.0's rewrite of its iptables
chains. A client on this machine asks the demo's web port on both workers throughout: one of them always
answers, and each is down for no longer than its own turn; after it, the firewall still lets this machine (no
peer) in on the allowed port only."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request

from tests.conftest import ROOT
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


def test_a_rolling_upgrade_from_docker_26_1_to_28_5(make_lab, tmp_path):
    lab = make_lab("e2e-upgrade")
    lab.up("--managers", "3", "--workers", "2", "--distro", "forky")
    mirror = lab.sh("worker1", "grep -rhoE 'https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ | head -1")
    for node in NODES:
        lab.sh(node, f"printf '{TRIXIE.format(mirror=mirror.strip())}' > /etc/apt/sources.list.d/trixie.sources"
                     " && apt-get update -q >/dev/null")  # fmt: skip
    madison = lab.sh("worker1", "apt-cache madison docker.io")
    versions = {
        line.split("|")[2].split()[1].split("/")[0]: line.split("|")[1].strip() for line in madison.splitlines()
    }
    old, new = versions["trixie"], versions["forky"]
    assert old.startswith("26.") and new.startswith("28."), versions

    templates = tmp_path / "stacks"
    shutil.copytree(ROOT / "templates" / "stacks", templates)
    data = stacks(templates, demo_vars={**DEMO_VARS, "web_replicas": 2})
    data["all"]["docker_version"] = old
    cold = lab.deploy(group_data=data)
    assert cold.returncode == 0, cold
    before = nodes(lab)
    assert len(before) == 5
    assert lab.sh("worker2", "docker version --format '{{.Server.Version}}'").startswith("26.")

    samples: dict[str, list[tuple[float, bool]]] = {"worker1": [], "worker2": []}
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            for worker in samples:
                samples[worker].append((time.monotonic(), answers(lab.address(worker))))
            time.sleep(0.3)

    poller = threading.Thread(target=client)
    poller.start()
    try:
        data["all"]["docker_version"] = new
        started = time.monotonic()
        upgraded = lab.deploy(group_data=data)
        took = time.monotonic() - started
    finally:
        done.set()
        poller.join()
    assert upgraded.returncode == 0, upgraded
    turns = [line for line in upgraded.output.splitlines() if "drained" in line.lower()]
    both = [(t, a or b) for (t, a), (_, b) in zip(samples["worker1"], samples["worker2"], strict=False)]
    gaps = {worker: longest_gap(s) for worker, s in samples.items()}
    print(f"upgrade took {took:.0f} s; longest gap with no answer: {longest_gap(both):.1f} s; per worker: {gaps}")
    assert longest_gap(both) < 3, (gaps, turns)  # one of the workers answered throughout
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
