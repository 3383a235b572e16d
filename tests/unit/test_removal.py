"""Taking hosts out (`swarm_state: absent`) and tearing the swarm down, as planned commands."""

from __future__ import annotations

import json
import logging

import pytest
from pyinfra.api.exceptions import PyinfraError

from pyinfra_swarm.deploys.daemon import configure_daemon
from pyinfra_swarm.deploys.firewall import configure_firewall
from pyinfra_swarm.deploys.install import install_docker
from pyinfra_swarm.deploys.swarm import configure_nodes, join_swarm, remove_nodes
from pyinfra_swarm.deploys.teardown import teardown
from tests.unit.fakes import commands, firewalld_files, host, plan
from tests.unit.test_swarm import node, nodes, swarm


def _listing(managers: int, workers: int, down: tuple[str, ...] = ()) -> str:
    entries = [node(f"M{i}", f"m{i}", "manager") for i in range(1, managers + 1)]
    entries += [node(f"W{i}", f"w{i}", state="down" if f"w{i}" in down else "ready") for i in range(1, workers + 1)]
    for entry in entries:
        entry["Status"]["Addr"] = _address(entry["Description"]["Hostname"])
        if entry["Spec"]["Role"] == "manager":
            entry["ManagerStatus"] = {"Leader": entry["ID"] == "M1", "Reachability": "reachable"}
    return nodes(*entries)


def _address(name: str) -> str:
    return f"10.1.0.{int(name[1:]) + (0 if name[0] == 'm' else 10)}"


def _cluster(managers: int, workers: int, **data_by_host):
    listing = _listing(managers, workers)
    hosts = {}
    for i in range(1, managers + 1):
        name = f"m{i}"
        hosts[name] = host(name, _address(name), swarm=swarm(f"M{i}", True), nodes=listing, docker_running=True,
                           packages={"docker.io": "20.10.24"}, **data_by_host.get(name, {}))  # fmt: skip
    for i in range(1, workers + 1):
        name = f"w{i}"
        hosts[name] = host(name, _address(name), swarm=swarm(f"W{i}", False), docker_running=True,
                           packages={"docker.io": "20.10.24"}, **data_by_host.get(name, {}))  # fmt: skip
    return [h for n, h in hosts.items() if n.startswith("m")], [h for n, h in hosts.items() if n.startswith("w")]


STEPS = [remove_nodes, configure_daemon, install_docker, configure_firewall, join_swarm, configure_nodes]


def test_a_worker_is_drained_left_and_forgotten_one_at_a_time_and_nothing_else_runs_on_it():
    managers, workers = _cluster(3, 2, w2={"swarm_state": "absent", "docker_purge": True})
    planned = plan(STEPS, managers, workers)
    removal = planned["w2"][0]
    managers_left = ["@fake/m1", "@fake/m2", "@fake/m3"]
    assert removal.serial and removal[1][:3] == [f"_drain_to_leave('W2', {managers_left}, 'active', None)",
                                                 "docker swarm leave --force",
                                                 f"_forget('W2', {managers_left}, 180)"]  # fmt: skip
    assert "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q docker.io" in removal[1]
    assert len(planned["w2"]) == 1  # no firewall, no join, no daemon for a host on its way out
    firewall = " ".join(commands(planned["w1"]))
    assert "10.1.0.12" not in firewall  # the leaving host is no peer any more


def test_a_manager_is_demoted_first_with_a_warning_about_what_is_left(caplog):
    managers, workers = _cluster(3, 1, m3={"swarm_state": "absent"})
    with caplog.at_level(logging.WARNING):
        planned = plan([remove_nodes], managers, workers)
    assert "_manager_command(['@fake/m1', '@fake/m2'], 'docker node demote M3')" in commands(planned["m3"])
    assert "2 manager(s) remain: the swarm then tolerates no manager loss" in caplog.text


def test_removing_the_last_manager_or_quorum_is_refused_before_any_change():
    managers, workers = _cluster(1, 1, m1={"swarm_state": "absent"})
    with pytest.raises(PyinfraError, match="would remove the swarm's last manager"):
        plan([remove_nodes], managers, workers)
    listing = json.loads(_listing(3, 0))
    for entry in listing[1:]:
        entry["ManagerStatus"]["Reachability"] = "unreachable"
    managers = [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=json.dumps(listing), swarm_state="absent"),
                host("m2", "10.1.0.2", swarm=swarm("M2", True), nodes=json.dumps(listing)),
                host("m3", "10.1.0.3", swarm=swarm("M3", True), nodes=json.dumps(listing))]  # fmt: skip
    with pytest.raises(PyinfraError, match="would leave 0 reachable of 2 managers, 2 needed"):
        plan([remove_nodes], managers)


def test_a_host_not_in_the_swarm_any_more_is_left_alone():
    managers, workers = _cluster(1, 1)
    gone = host("w9", "10.1.0.19", swarm=json.dumps({"LocalNodeState": "inactive"}), swarm_state="absent")
    planned = plan(STEPS, managers, [*workers, gone])
    assert commands(planned["w9"]) == []


def test_teardown_removes_workloads_then_workers_then_managers_then_our_firewall():
    managers, workers = _cluster(1, 1, m1={"swarm_networks": {"backend": {}}})
    firewall = {"chain": "yes"}
    managers = [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=_listing(1, 1), firewall=firewall,
                     swarm_networks={"backend": {}}, docker_purge=True, packages={"docker.io": "1"})]  # fmt: skip
    workers = [host("w1", "10.1.0.11", swarm=swarm("W1", False), firewall=firewall, swarm_networks={"backend": {}},
                    docker_purge=True, packages={"docker.io": "1"})]  # fmt: skip
    planned = plan([teardown], managers, workers)
    worker, manager = commands(planned["w1"]), commands(planned["m1"])
    assert worker[0] == "docker swarm leave --force" and "docker swarm leave --force" in manager
    assert any("iptables -w -D INPUT -j PYINFRA-SWARM" in c for c in worker)
    assert "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q docker.io" in worker
    again = plan([teardown], [host("m1", "10.1.0.1", swarm=json.dumps({"LocalNodeState": "inactive"}))],
                 [host("w1", "10.1.0.11", swarm=json.dumps({"LocalNodeState": "inactive"}))])  # fmt: skip
    assert commands(again["m1"]) == [] and commands(again["w1"]) == []


def test_teardown_removes_our_firewalld_zone_then_its_ipsets():
    listing = firewalld_files(
        '<source ipset="pyinfra-swarm-zone-peers4"/>',
        [],
        {"pyinfra-swarm-zone-peers4": ["10.1.0.1"], "pyinfra-swarm-zone-peers6": []},
    )
    inactive = json.dumps({"LocalNodeState": "inactive"})
    manager = host(
        "m1", "10.1.0.1", swarm=inactive, firewall={"firewalld": "active"}, extra={"firewalld files": listing}
    )
    assert commands(plan([teardown], [manager])["m1"]) == [
        "firewall-cmd --permanent --delete-zone=pyinfra-swarm",
        "firewall-cmd --permanent --delete-ipset=pyinfra-swarm-zone-peers4",
        "firewall-cmd --permanent --delete-ipset=pyinfra-swarm-zone-peers6",
        "firewall-cmd --reload",
    ]
