"""The swarm deploy on the lab: fresh nodes to a healthy swarm, idempotent, self-healing, HA, and refusing
bad input before any change. The lab's kernel has no IPVS, so no test relies on VIPs or the ingress mesh."""

from __future__ import annotations

import itertools
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.conftest import run as run_command
from tests.e2e.conftest import Lab

WORKERS = ["worker1", "worker2", "worker3"]
DAEMON = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "5m", "max-file": "2"},
    "metrics-addr": "127.0.0.1:9323",
    "default-address-pools": [{"base": "10.200.0.0/16", "size": 24}],
}
# These tests are about the swarm: the repo's demo workloads (registry, images, stacks) are switched off.
SWARM_ONLY = {"registry_mode": None, "docker_image_archives": [], "docker_images": [], "swarm_stacks": []}
GROUP_DATA = {
    "all": {**SWARM_ONLY, "docker_daemon_config": DAEMON, "swarm_firewall_allow": ["22/tcp", "9090/tcp"]},
    "swarm_workers": {"swarm_labels": {"role": "worker", "tier": "web"}},
}

# Inventory variants for bad-input runs: the lab inventory, then one change to it.
INVENTORY = """
import os
from pathlib import Path
from pyinfra_swarm.lab.inventory import lab_groups
_groups = lab_groups(Path(os.environ["PYINFRA_SWARM_LAB_DIR"]) / os.environ["PYINFRA_SWARM_LAB"])
swarm_managers, swarm_workers = _groups["swarm_managers"], _groups["swarm_workers"]
_w1, _w2 = swarm_workers[0][1], swarm_workers[1][1]
"""


def nodes(lab: Lab, manager: str = "manager1") -> dict[str, dict]:
    """hostname -> node (role, availability, state, labels, manager status) as a manager sees the swarm."""
    raw = lab.sh(manager, "docker node inspect $(docker node ls -q)")
    return {
        n["Description"]["Hostname"].split("-", 2)[-1]: {
            "id": n["ID"],
            "role": n["Spec"]["Role"],
            "availability": n["Spec"]["Availability"],
            "state": n["Status"]["State"],
            "labels": n["Spec"].get("Labels") or {},
            "reachability": (n.get("ManagerStatus") or {}).get("Reachability"),
            "leader": (n.get("ManagerStatus") or {}).get("Leader", False),
        }
        for n in json.loads(raw)
    }


def docker_installed(lab: Lab, node: str) -> bool:
    return lab.ssh(node, "command -v dockerd || test -e /etc/docker/daemon.json").returncode == 0


def assert_no_token_printed(lab: Lab, manager: str = "manager1") -> None:
    """Neither join token is in anything the deploys printed, nor in any node's journal or auth log (sudo
    logs the commands it runs), nor in any process's command line right now."""
    tokens = lab.sh(manager, "docker swarm join-token -q worker; docker swarm join-token -q manager").split()
    assert len(tokens) == 2
    for output in lab.outputs:
        for token in tokens:
            assert token not in output
    for node in [n["node"] for n in lab.nodes]:
        logs = lab.ssh(node, "journalctl --no-pager -o cat 2>/dev/null; cat /var/log/auth.log 2>/dev/null; "
                             "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")  # fmt: skip
        assert "SWMTKN-" not in logs.stdout, f"a join token is in the logs of {node}"


def can_connect(address: str, port: int) -> bool:
    """Whether this machine (the lab's host: not a swarm peer) gets a TCP connection to address:port."""
    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except OSError:
        return False


def engine_restarts(lab: Lab, node_names: list[str]) -> dict[str, tuple[int, int]]:
    """node -> (when dockerd last stopped, when it last became active), on the kernel's monotonic clock,
    which every lab node shares."""
    windows = {}
    for node in node_names:
        show = lab.sh(node, "systemctl show docker -p InactiveEnterTimestampMonotonic -p ActiveEnterTimestampMonotonic")
        values = dict(line.split("=", 1) for line in show.split())
        windows[node] = (int(values["InactiveEnterTimestampMonotonic"]), int(values["ActiveEnterTimestampMonotonic"]))
    return windows


@pytest.mark.parametrize("distro", ["bookworm", "forky"])
def test_one_manager_three_workers(make_lab, distro):
    """The whole swarm suite, on Debian 12 nodes (docker.io 20.10) and on Debian 14 nodes (docker.io 28.5,
    containerd 2; Debian 13's 26.1 runs in the mixed cluster and the rolling upgrade)."""
    lab = make_lab({"bookworm": "e2e-swarm", "forky": "e2e-forky"}[distro])
    lab.up("--managers", "1", "--workers", "3", "--distro", distro)

    cold = lab.deploy("--debug", group_data=GROUP_DATA)
    assert cold.returncode == 0, cold
    engine = lab.sh("worker3", "docker version --format '{{.Server.Version}}'").strip()
    assert engine.startswith({"bookworm": "20.10.", "forky": "28."}[distro]), engine
    swarm = nodes(lab)
    assert sorted(swarm) == ["manager1", *WORKERS]
    assert all(n["state"] == "ready" and n["availability"] == "active" for n in swarm.values())
    assert swarm["manager1"]["role"] == "manager" and swarm["manager1"]["leader"]
    for worker in WORKERS:
        assert swarm[worker]["role"] == "worker"
        assert swarm[worker]["labels"]["role"] == "worker" and swarm[worker]["labels"]["tier"] == "web"

    # Docker is configured as the data says.
    for node in ["manager1", "worker2"]:
        assert json.loads(lab.sh(node, "cat /etc/docker/daemon.json")) == DAEMON
        assert lab.sh(node, "docker info --format '{{.LoggingDriver}}'").strip() == "json-file"
    assert "10.200." in lab.sh("manager1", "docker network inspect docker_gwbridge --format '{{json .IPAM}}'")

    # Firewall: a port not in the list is refused between nodes; swarm ports answer peers, and only peers.
    lab.sh("worker1", "(timeout 20 nc -l -p 9999 >/dev/null 2>&1 &) ; sleep 0.5")
    assert lab.ssh("worker2", f"nc -z -w 3 {lab.address('worker1')} 9999").returncode != 0
    assert lab.ssh("worker2", f"nc -z -w 3 {lab.address('worker1')} 7946").returncode == 0
    assert lab.ssh("worker2", f"nc -z -w 3 {lab.address('manager1')} 2377").returncode == 0
    assert lab.ssh("worker2", f"nc -z -w 3 {lab.address('worker1')} 2377").returncode != 0  # managers only
    assert not can_connect(lab.address("worker1"), 7946) and not can_connect(lab.address("manager1"), 2377)
    assert can_connect(lab.address("worker1"), 22)

    # Swarm traffic flows: containers on two nodes talk over an overlay network (VXLAN through the firewall).
    for node in ["manager1", "worker1"]:
        lab.sh(node, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null && "
                     "mkdir -p /tmp/bb/bin && cp /bin/busybox /tmp/bb/bin/ && "
                     "tar -C /tmp/bb -c . | docker import - e2e-busybox >/dev/null")  # fmt: skip
    lab.sh("manager1", "docker network create -d overlay --attachable e2e-net >/dev/null && "
                       "docker run -d --name e2e-a --network e2e-net e2e-busybox /bin/busybox sleep 600")  # fmt: skip
    ping = lab.ssh("worker1", "docker run --rm --network e2e-net e2e-busybox /bin/busybox ping -c 2 -W 3 e2e-a")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    lab.sh("manager1", "docker rm -f e2e-a >/dev/null")

    # Published ports go through Docker's DNAT, not INPUT: non-peers reach only the allowed one (9090), peers
    # reach both (host-mode ports: the lab has no IPVS for the ingress mesh).
    lab.sh("manager1", f"docker service create -d --name e2e-pub --constraint node.hostname=={lab.name}-worker1 "
                       "--publish mode=host,published=9090,target=8000 --publish mode=host,published=9091,target=8001 "
                       "e2e-busybox /bin/busybox sh -c '/bin/busybox httpd -p 8001 -h / && "
                       "exec /bin/busybox httpd -f -p 8000 -h /' >/dev/null")  # fmt: skip
    deadline = time.monotonic() + 60
    while not can_connect(lab.address("worker1"), 9090):
        assert time.monotonic() < deadline, "the published port 9090 never answered"
        time.sleep(1)
    assert not can_connect(lab.address("worker1"), 9091), "a published port not in swarm_firewall_allow answered"
    assert lab.ssh("worker2", f"nc -z -w 3 {lab.address('worker1')} 9091").returncode == 0  # a peer
    lab.sh("manager1", "docker service rm e2e-pub >/dev/null")

    # The same deploy again changes nothing, at any verbosity.
    for verbosity in ["-v", "-vv"]:
        again = lab.deploy(verbosity, group_data=GROUP_DATA)
        assert again.returncode == 0, again
        assert again.changed == [], again

    # A worker that left by hand is rejoined and its stale entry removed.
    lab.sh("worker2", "docker swarm leave")
    rejoin = lab.deploy("-vv", group_data=GROUP_DATA)
    assert rejoin.returncode == 0, rejoin
    assert "joined the swarm as a worker" in rejoin.output
    swarm = nodes(lab)
    assert sorted(swarm) == ["manager1", *WORKERS], "the stale entry of worker2 is still listed"
    assert swarm["worker2"]["state"] == "ready" and swarm["worker2"]["labels"]["tier"] == "web"

    # Labels the deploy set and the data no longer has are removed; others stay.
    lab.sh("manager1", "docker node update --label-add manual=yes lab-x 2>/dev/null; "
                       f"docker node update --label-add manual=yes {swarm['worker3']['id']}")  # fmt: skip
    relabel = lab.deploy(group_data={**GROUP_DATA, "swarm_workers": {"swarm_labels": {"role": "worker"}}})
    assert relabel.returncode == 0, relabel
    labels = nodes(lab)["worker3"]["labels"]
    assert "tier" not in labels and labels["role"] == "worker" and labels["manual"] == "yes"

    # A daemon.json change that needs a restart: one node at a time, managers first, each drained and back
    # (Ready, active) before the next engine stops.
    before = engine_restarts(lab, ["manager1", *WORKERS])
    slower = {**DAEMON, "log-opts": {"max-size": "6m", "max-file": "2"}}
    restart = lab.deploy("-v", group_data={**GROUP_DATA, "all": {**GROUP_DATA["all"], "docker_daemon_config": slower}})
    assert restart.returncode == 0, restart
    assert restart.output.count("draining node ") == 4, restart
    windows = engine_restarts(lab, ["manager1", *WORKERS])
    assert all(windows[n][0] > before[n][1] for n in windows), "an engine was not restarted"
    ordered = sorted(windows.items(), key=lambda item: item[1][0])
    assert ordered[0][0] == "manager1", ordered
    for (_, (_, started)), (node, (stopped, _)) in itertools.pairwise(ordered):
        assert stopped > started, f"{node}'s engine stopped before the previous one was back: {ordered}"
    swarm = nodes(lab)
    assert all(n["state"] == "ready" and n["availability"] == "active" for n in swarm.values()), swarm

    # --limit to a new manager never starts a second swarm: it joins this one or stops with the reason.
    lab.up("--managers", "2", "--workers", "3", "--distro", distro)
    limited = lab.deploy("--limit", "manager2", group_data=GROUP_DATA)
    state = json.loads(lab.sh("manager2", "docker info --format '{{json .Swarm}}'"))
    cluster = json.loads(lab.sh("manager1", "docker info --format '{{json .Swarm.Cluster.ID}}'"))
    assert state["LocalNodeState"] == "inactive" or state.get("Cluster", {}).get("ID") == cluster, (state, limited)
    assert "swarm init" not in limited.output and "Initialise the swarm" not in limited.output
    if limited.returncode != 0:
        assert "don't know this host yet: run the deploy with them in the limit" in limited.output, limited
    full = lab.deploy(group_data=GROUP_DATA)
    assert full.returncode == 0, full
    swarm = nodes(lab)
    assert swarm["manager2"]["role"] == "manager" and swarm["manager2"]["reachability"] == "reachable"

    assert_no_token_printed(lab)


def test_three_managers_survive_losing_one(make_lab, docker_api):
    lab = make_lab("e2e-ha")
    lab.up("--managers", "3", "--workers", "2")
    data = {"all": {**SWARM_ONLY, "swarm_firewall": "ufw"}}
    sudo = {"PYINFRA_SWARM_LAB_USER": "debian"}  # through sudo, as on servers without root logins

    cold = lab.deploy(group_data=data, env=sudo)
    assert cold.returncode == 0, cold
    swarm = nodes(lab)
    managers = [n for n in swarm.values() if n["role"] == "manager"]
    assert len(managers) == 3 and all(m["reachability"] == "reachable" for m in managers)
    assert sum(m["leader"] for m in managers) == 1
    assert all(n["state"] == "ready" for n in swarm.values())
    assert "Status: active" in lab.sh("worker1", "ufw status")
    # ufw holds the allow list only; the swarm ports are our chain's, matched against the peers' set.
    assert "allow from" not in lab.sh("worker1", "ufw show added")
    assert "--match-set pyinfra-swarm-peers4 src" in lab.sh("worker1", "iptables -S PYINFRA-SWARM")
    assert lab.ssh("worker2", f"nc -z -w 3 {lab.address('worker1')} 22").returncode == 0

    # A manager demoted by hand is promoted back to match the inventory.
    lab.sh("manager1", f"docker node demote {swarm['manager3']['id']}")
    fixed = lab.deploy(group_data=data, env=sudo)
    assert fixed.returncode == 0, fixed
    assert nodes(lab)["manager3"]["role"] == "manager"
    # A promoted manager takes a few seconds to join raft: lose a manager only once all three are reachable,
    # or the swarm has no quorum (which the deploy reports as "the swarm has no leader", see the unit tests).
    deadline = time.monotonic() + 90
    while not all(n["reachability"] == "reachable" for n in nodes(lab).values() if n["role"] == "manager"):
        assert time.monotonic() < deadline, nodes(lab)
        time.sleep(2)
    again = lab.deploy(group_data=data, env=sudo)
    assert again.changed == [], again
    assert_no_token_printed(lab)  # joins ran through sudo: nothing in sudo's log, the journal or `ps`

    # Autolock turned on by hand (the deploy leaves it as it is), manager3's engine restarted: it is locked, and
    # there is no key file to unlock it from. Even with swarm_force_rejoin the deploy never makes it leave: it
    # stops there with what to do, and the other hosts carry on.
    key = next(line.split()[0] for line in lab.sh("manager1", "docker swarm update --autolock=true").splitlines()
               if line.strip().startswith("SWMKEY-"))  # fmt: skip
    lab.sh("manager3", "systemctl restart docker")
    assert lab.sh("manager3", "docker info --format '{{.Swarm.LocalNodeState}}'").strip() == "locked"
    forced = {"all": {**data["all"], "swarm_force_rejoin": True}}
    locked = lab.deploy(group_data=forced, env=sudo)
    assert locked.returncode != 0 and "this manager is locked and the unlock key file" in locked.output, locked
    assert "Leave the other swarm" not in locked.output, locked
    assert lab.sh("manager3", "docker info --format '{{.Swarm.LocalNodeState}}'").strip() == "locked"
    lab.sh("manager3", f"echo {key} | docker swarm unlock")
    lab.sh("manager1", "docker swarm update --autolock=false")
    deadline = time.monotonic() + 60
    while not all(n["reachability"] == "reachable" for n in nodes(lab).values() if n["role"] == "manager"):
        assert time.monotonic() < deadline, nodes(lab)
        time.sleep(2)

    # Lose the first manager, add a worker: the deploy goes through another manager.
    lab.up("--managers", "3", "--workers", "3")
    docker_api.stop("pyinfra-swarm-e2e-ha-manager1", timeout=30)
    degraded = lab.deploy("-vv", group_data=data, env=sudo)
    assert "manager1" in degraded.output and "Could not connect" in degraded.output
    assert "joined the swarm as a worker through" in degraded.output, degraded
    swarm = nodes(lab, "manager2")
    assert swarm["worker3"]["state"] == "ready" and swarm["worker3"]["role"] == "worker"
    assert swarm["manager1"]["reachability"] == "unreachable"
    assert sum(n["leader"] for n in swarm.values()) == 1
    # Every reachable host succeeded: only manager1 (unreachable) is reported as failed.
    assert [
        row for row in degraded.output.splitlines() if "Error" in row and "[" in row and "manager1" not in row
    ] == []
    docker_api.start("pyinfra-swarm-e2e-ha-manager1")
    assert_no_token_printed(lab, manager="manager2")


@pytest.mark.parametrize("workers", [11])
def test_one_manager_eleven_workers_form(make_lab, workers):
    """Every worker needs the join token at the same moment: the manager is asked once, not once per worker
    (sshd allows 10 sessions per connection)."""
    lab = make_lab("e2e-wide")
    lab.up("--managers", "1", "--workers", str(workers))
    run = lab.deploy("-v", group_data={"all": SWARM_ONLY})
    assert run.returncode == 0, run
    swarm = nodes(lab)
    assert len(swarm) == workers + 1 and all(n["state"] == "ready" for n in swarm.values())
    assert lab.deploy(group_data={"all": SWARM_ONLY}).changed == []


def test_a_mixed_cluster_of_debian_13_managers_and_debian_14_workers_forms_behind_firewalld(make_lab):
    """Docker 26.1 managers, 28.5 workers (the engine that rewrote its iptables chains), firewalld running on
    every node: `swarm_firewall: auto` takes it, the peers are two firewalld ipsets (the zone's sources), the
    swarm forms through it and a stranger is refused."""
    lab = make_lab("e2e-mixed")
    lab.up("--managers", "1", "--workers", "2", "--distro", "trixie", "--worker-distro", "forky")
    names = ["manager1", "worker1", "worker2"]
    install = "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q firewalld netbase"
    # firewalld's start flushes the node's iptables NAT table, where Docker answers the container's DNS: the
    # nodes then ask this machine's resolver directly (a lab matter; a server's DNS isn't NATed so).
    resolver = next(line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
                    if line.startswith("nameserver") and not line.split()[1].startswith("127."))  # fmt: skip
    start = f"systemctl start firewalld && echo 'nameserver {resolver}' > /etc/resolv.conf"
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda node: lab.sh(node, f"{install} >/dev/null && {start}"), names))
    run = lab.deploy(group_data={"all": SWARM_ONLY})
    assert run.returncode == 0, run
    assert "Open the swarm ports to peers (firewalld)" in run.output, run
    engines = lab.sh("manager1", "docker node ls --format '{{.Hostname}} {{.Status}} {{.EngineVersion}}'").split("\n")
    versions = {line.split()[0].split("-", 2)[-1]: line.split()[2] for line in engines if line.strip()}
    assert versions["manager1"].startswith("26.") and versions["worker1"].startswith("28."), versions
    assert all(" Ready " in f" {line} " for line in engines if line.strip()), engines
    peers = lab.sh("worker1", "firewall-cmd --ipset=pyinfra-swarm-zone-peers4 --get-entries").split()
    assert sorted(peers) == sorted(lab.address(node) for node in names), peers
    assert not can_connect(lab.address("worker1"), 7946)  # this machine is no peer
    assert lab.deploy(group_data={"all": SWARM_ONLY}).changed == []
    # status: each node's engine, API, containerd and firewall backend, and the two generations flagged.
    report = json.loads(run_command([str(BIN / "pyinfra-swarm"), "status", "inventory/lab.py", "--json"],
                                    env=lab.env, timeout=60).stdout)  # fmt: skip
    engines = {n["inventory_host"]: n for n in report["nodes"]}
    assert engines["worker1"]["api"] == "1.51" and engines["worker1"]["containerd"].startswith("2."), engines
    # 28.5 says "iptables+firewalld" where firewalld runs; 26.1 reports none.
    assert engines["worker1"]["firewall_backend"] == "iptables+firewalld", engines
    assert engines["manager1"]["firewall_backend"] is None, engines
    assert engines["manager1"]["api"] == "1.45", engines
    assert any(w.startswith("engines of different generations (26.x: ") for w in report["warnings"]), report
