"""Day 2 on the lab: `pyinfra-swarm status`, taking workers and managers out safely, scaling out, teardown."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time

from tests.conftest import BIN, run
from tests.e2e.conftest import Lab
from tests.e2e.test_swarm import INVENTORY, SWARM_ONLY, nodes

BUSYBOX = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null && mkdir -p /tmp/bb/bin && "
           "cp /bin/busybox /tmp/bb/bin/ && tar -C /tmp/bb -c . | docker import - e2e-busybox >/dev/null")  # fmt: skip
STATUS_KEYS = {"schema": str, "through": str, "healthy": bool, "problems": list, "warnings": list, "nodes": list,
               "quorum": dict, "services": list, "drift": dict, "expiry": dict, "lock": type(None)}  # fmt: skip


def status(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    return run([str(BIN / "pyinfra-swarm"), "status", "inventory/lab.py", *args], env=lab.env, timeout=60)


def inventory(lab: Lab, change: str) -> str:
    """The lab's inventory with one change to its host data (`_w2`, `_m3`, ...: see test_swarm.INVENTORY)."""
    path = lab.state_dir / "day2_inventory.py"
    extra = "_m3, _m2, _m1 = swarm_managers[-1][1], swarm_managers[1][1], swarm_managers[0][1]\n"
    path.write_text(textwrap.dedent(INVENTORY) + extra + change + "\n")
    return str(path)


def wait_for(what: str, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(2)


def replicas(lab: Lab, service: str) -> str:
    return lab.sh("manager1", f"docker service ls --filter name={service} --format '{{{{.Replicas}}}}'").strip()


def test_status_and_safe_removal_on_three_managers_and_two_workers(make_lab, docker_api):
    lab = make_lab("e2e-day2")
    lab.up("--managers", "3", "--workers", "2")
    data = {"all": SWARM_ONLY}
    assert lab.deploy(group_data=data).returncode == 0
    for node in ("worker1", "worker2"):
        lab.sh(node, BUSYBOX)
    lab.sh("manager1", "docker service create -d --name e2e-pinned --constraint node.hostname==e2e-day2-worker2 "
                       "e2e-busybox /bin/busybox sleep 86400 >/dev/null && "
                       "docker service create -d --name e2e-spread --replicas 2 --constraint node.role==worker "
                       "e2e-busybox /bin/busybox sleep 86400 >/dev/null")  # fmt: skip
    wait_for(
        "the services to run", lambda: replicas(lab, "e2e-pinned") == "1/1" and replicas(lab, "e2e-spread") == "2/2"
    )

    # Healthy: exit 0, a table, and JSON of the documented schema, fast.
    started = time.monotonic()
    healthy = status(lab)
    elapsed = time.monotonic() - started
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "swarm status (through manager1): healthy" in healthy.stdout and "e2e-day2-worker2" in healthy.stdout
    assert elapsed < 5, f"status took {elapsed:.1f} s"
    report = json.loads(status(lab, "--json").stdout)
    assert {key: type(report[key]) for key in STATUS_KEYS} == STATUS_KEYS
    assert report["schema"] == "pyinfra-swarm.status/3" and report["quorum"]["tolerates"] == 1
    assert {n["inventory_host"] for n in report["nodes"]} == {"manager1", "manager2", "manager3", "worker1", "worker2"}

    # A manager down: non-zero, the manager and the quorum risk named.
    docker_api.stop("pyinfra-swarm-e2e-day2-manager3", timeout=30)
    wait_for("manager3 to be seen as unreachable", lambda: status(lab).returncode == 1)
    degraded = status(lab)
    assert "manager e2e-day2-manager3 is unreachable" in degraded.stdout, degraded.stdout
    assert "quorum at risk: 2 of 3 managers reachable" in degraded.stdout
    docker_api.start("pyinfra-swarm-e2e-day2-manager3")
    wait_for("manager3 to be back", lambda: status(lab).returncode == 0, timeout=120)

    # A worker that runs a replica down: the node and the service below its replicas named.
    docker_api.stop("pyinfra-swarm-e2e-day2-worker2", timeout=30)
    wait_for("worker2 to be seen as down", lambda: "node e2e-day2-worker2 is down" in status(lab).stdout)
    wait_for("e2e-pinned below its replicas", lambda: "service e2e-pinned runs 0/1" in status(lab).stdout)
    assert status(lab).returncode == 1
    docker_api.start("pyinfra-swarm-e2e-day2-worker2")
    wait_for("worker2 to be back", lambda: status(lab).returncode == 0, timeout=120)
    lab.sh("manager1", "docker service rm e2e-pinned >/dev/null")

    # Take worker2 out: 3+1, every service at full replicas, no Down entry left. Its address leaves the
    # peers' set on the others: shut out of the swarm ports, with the same rules as before.
    gossip = f"timeout 3 bash -c '</dev/tcp/{lab.address('manager1')}/7946'"
    assert lab.ssh("worker2", gossip).returncode == 0  # a peer: let in
    rules = lab.sh("manager1", "iptables -w -S PYINFRA-SWARM")
    removal = lab.deploy("-v", group_data=data, inventory=inventory(lab, "_w2['swarm_state'] = 'absent'"))
    assert removal.returncode == 0, removal
    assert lab.ssh("worker2", gossip).returncode != 0  # not a peer any more: refused
    assert lab.sh("manager1", "iptables -w -S PYINFRA-SWARM") == rules
    assert lab.address("worker2") not in lab.sh("manager1", "ipset list pyinfra-swarm-peers4")
    swarm = nodes(lab)
    assert sorted(swarm) == ["manager1", "manager2", "manager3", "worker1"], swarm
    assert all(n["state"] == "ready" for n in swarm.values())
    assert replicas(lab, "e2e-spread") == "2/2"
    assert lab.sh("worker2", "docker info --format '{{.Swarm.LocalNodeState}}'").strip() == "inactive"
    again = lab.deploy(group_data=data, inventory=inventory(lab, "_w2['swarm_state'] = 'absent'"))
    assert again.returncode == 0 and again.changed == [], again
    # With that inventory, a host the data takes out is not drift.
    removed = run([str(BIN / "pyinfra-swarm"), "status", inventory(lab, "_w2['swarm_state'] = 'absent'")],
                  env=lab.env, timeout=60)  # fmt: skip
    assert removed.returncode == 0 and "not in the swarm" not in removed.stdout, removed.stdout + removed.stderr

    # Take manager3 out: demoted first, 2 managers left, with the warning.
    both = "_w2['swarm_state'] = 'absent'; _m3['swarm_state'] = 'absent'"
    demoted = lab.deploy("-v", group_data=data, inventory=inventory(lab, both))
    assert demoted.returncode == 0, demoted
    assert "2 manager(s) remain: the swarm then tolerates no manager loss" in demoted.output
    swarm = nodes(lab)
    assert sorted(swarm) == ["manager1", "manager2", "worker1"]
    assert [n["role"] for n in swarm.values()].count("manager") == 2

    # Taking the last managers out is refused, and nothing changes.
    every = both + "; _m1['swarm_state'] = 'absent'; _m2['swarm_state'] = 'absent'"
    refused = lab.deploy(group_data=data, inventory=inventory(lab, every))
    assert refused.returncode != 0 and "would remove the swarm's last manager" in refused.output, refused
    assert sorted(nodes(lab)) == ["manager1", "manager2", "worker1"]


def test_scaling_out_then_teardown_and_rebuild(make_lab):
    lab = make_lab("e2e-scale")
    lab.up("--managers", "1", "--workers", "3")
    data = {"all": SWARM_ONLY}
    assert lab.deploy(group_data=data).returncode == 0
    engines = {n: lab.sh(n, "systemctl show docker -p ActiveEnterTimestampMonotonic") for n in
               ("manager1", "worker1", "worker2", "worker3")}  # fmt: skip

    # 1+3 -> 1+5 by inventory: the new hosts install and join; the others only let the new peers in.
    lab.up("--managers", "1", "--workers", "5")
    grown = lab.deploy("-vv", group_data=data)  # -vv: every command, as it runs
    assert grown.returncode == 0, grown
    assert grown.hosts_changed("Install Docker | Install Docker (distro)") == 2
    assert grown.hosts_changed("Join the swarm | Join the swarm as a worker") == 2
    # One operation on the manager brings the nodes to their labels: only the new ones needed any.
    node_commands = [line for line in grown.output.splitlines()
                     if ">>> " in line and re.search(r"docker node (update|promote|demote|rm) ", line)]  # fmt: skip
    assert node_commands and all("worker4" in line or "worker5" in line for line in node_commands), node_commands
    assert {n: lab.sh(n, "systemctl show docker -p ActiveEnterTimestampMonotonic") for n in engines} == engines
    assert len(nodes(lab)) == 6 and status(lab).returncode == 0
    assert lab.address("worker5") in lab.sh("manager1", "ipset list pyinfra-swarm-peers4")  # let in by the set

    # Teardown: stacks and objects gone, every node out, our firewall gone; again: nothing to do.
    down = lab.deploy(group_data=data, file="teardown.py")
    assert down.returncode == 0, down
    for node in ("manager1", "worker1", "worker5"):
        assert lab.sh(node, "docker info --format '{{.Swarm.LocalNodeState}}'").strip() == "inactive"
        assert lab.ssh(node, "iptables -w -S PYINFRA-SWARM").returncode != 0
        assert lab.ssh(node, "systemctl is-enabled pyinfra-swarm-firewall.service").stdout.strip() != "enabled"
    assert status(lab).returncode == 2
    again = lab.deploy(group_data=data, file="teardown.py")
    assert again.returncode == 0 and again.changed == [], again

    # The deploy builds it again from scratch.
    rebuilt = lab.deploy(group_data=data)
    assert rebuilt.returncode == 0, rebuilt
    swarm = nodes(lab)
    assert len(swarm) == 6 and all(n["state"] == "ready" for n in swarm.values())
