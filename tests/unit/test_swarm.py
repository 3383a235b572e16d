"""Swarm membership: who inits, who joins, who is left alone, and the node commands run on a manager."""

from __future__ import annotations

import json
import re

import pytest
from pyinfra.api.exceptions import PyinfraError

from pyinfra_swarm.deploys.install import install_docker
from pyinfra_swarm.deploys.swarm import configure_nodes, join_swarm
from tests.unit.fakes import commands, host, plan


def swarm(node_id: str, manager: bool, cluster: str = "c1", state: str = "active") -> str:
    info = {"LocalNodeState": state, "NodeID": node_id, "ControlAvailable": manager,
            "RemoteManagers": [{"NodeID": "m", "Addr": "10.1.0.1:2377"}]}  # fmt: skip
    if manager:
        info["Cluster"] = {"ID": cluster}
    return json.dumps(info)


def node(node_id: str, hostname: str, role: str = "worker", labels=None, availability="active", state="ready"):
    return {"ID": node_id, "Description": {"Hostname": hostname}, "Status": {"State": state, "Addr": "x"},
            "Spec": {"Role": role, "Availability": availability, "Labels": labels or {}},
            "ManagerStatus": {"Leader": True, "Reachability": "reachable"} if role == "manager" else None}  # fmt: skip


def nodes(*entries) -> str:
    return json.dumps(list(entries))


def _plan(managers, workers=()):
    return plan([join_swarm, configure_nodes], list(managers), list(workers))


def test_fresh_hosts_init_on_the_first_manager_and_join_the_rest():
    cluster = {"swarm_default_addr_pool": ["10.20.0.0/16"], "swarm_default_addr_pool_mask_length": 24,
               "swarm_data_path_port": 4790}  # fmt: skip
    planned = _plan(
        [host("m1", "10.1.0.1", swarm_availability="drain", **cluster), host("m2", "10.1.0.2", **cluster)],
        [host("w1", "10.1.0.3", swarm_labels={"zone": "a", "ssd": True}, **cluster)],
    )  # fmt: skip
    assert commands(planned["m1"])[0] == (
        "docker swarm init --advertise-addr 10.1.0.1 --listen-addr 10.1.0.1:2377 --default-addr-pool 10.20.0.0/16 "
        "--default-addr-pool-mask-length 24 --data-path-port 4790 --availability drain >/dev/null"
    )
    assert commands(planned["m2"]) == ["_join('manager', '10.1.0.2', {'@fake/m1': '10.1.0.1'}, None)"]
    assert commands(planned["w1"]) == ["_join('worker', '10.1.0.3', {'@fake/m1': '10.1.0.1'}, None)"]
    # Nodes that join in this run: changed only if they are in the swarm by then (their host may have failed).
    assert commands(planned["m1"])[1:] == [
        f"if docker node inspect {name} >/dev/null 2>&1; then {update}; else echo 'node {name} is not in the swarm "
        "(its host failed before joining): left for the next run'; fi"
        for name, update in [
            ("m1", "docker node update --availability drain --label-add pyinfra-swarm.availability=drain m1"),
            ("w1", "docker node update --label-add ssd=true --label-add zone=a "
                   "--label-add pyinfra-swarm.managed-labels=ssd,zone w1"),
        ]
    ]  # fmt: skip


def test_members_of_this_swarm_are_left_alone():
    listing = nodes(node("M1", "m1", "manager"), node("W1", "w1"))
    planned = _plan([host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing)],
                    [host("w1", "10.1.0.2", swarm=swarm("W1", False))])  # fmt: skip
    assert planned == {"m1": [], "w1": []}


def test_any_reachable_manager_in_the_swarm_acts_when_the_first_is_fresh():
    listing = nodes(node("M2", "m2", "manager"), node("W1", "w1"))
    planned = _plan(
        [host("m1", "10.1.0.1"), host("m2", "10.1.0.2", swarm=swarm("M2", True), nodes=listing)],
        [host("w1", "10.1.0.3", swarm=swarm("W1", False))],
    )
    assert commands(planned["m1"]) == ["_join('manager', '10.1.0.1', {'@fake/m2': '10.1.0.2'}, None)"]
    assert commands(planned["m2"]) == []  # no init: a manager is already in the swarm


def test_roles_follow_the_inventory_and_labels_removed_from_data_are_removed():
    listing = nodes(
        node("M1", "m1", "manager"),
        node("W1", "w1", "worker"),  # in swarm_managers: promote
        node("X1", "x1", "manager"),  # in swarm_workers: demote
        node("W2", "w2", labels={"zone": "a", "keep": "1", "pyinfra-swarm.managed-labels": "old,zone", "old": "1"}),
    )
    planned = _plan(
        [
            host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing),
            host("w1", "10.1.0.2", swarm=swarm("W1", False)),
        ],
        [host("x1", "10.1.0.3", swarm=swarm("X1", True)), host("w2", "10.1.0.4", swarm=swarm("W2", False),
                                                                swarm_labels={"zone": "b"})],
    )  # fmt: skip
    assert commands(planned["m1"]) == [
        "docker node promote W1",
        "docker node demote X1",
        "docker node update --label-add zone=b --label-rm old --label-add pyinfra-swarm.managed-labels=zone W2",
    ]


def test_a_rejoining_host_has_its_stale_entry_removed():
    listing = nodes(node("M1", "m1", "manager"), node("OLD", "w1", state="down"))
    planned = _plan([host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing)],
                    [host("w1", "10.1.0.2", swarm=swarm("", False, state="inactive"))])  # fmt: skip
    assert commands(planned["w1"]) == ["_join('worker', '10.1.0.2', {'@fake/m1': '10.1.0.1'}, None)"]
    assert commands(planned["m1"]) == ["docker node rm --force OLD"]


def test_a_host_in_another_swarm_is_stopped_unless_force_rejoin():
    listing = nodes(node("M1", "m1", "manager"), node("W1", "w1"))
    managers = [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing)]
    planned = _plan(managers, [host("w1", "10.1.0.2", swarm=swarm("W1", False)),
                               host("w2", "10.1.0.3", swarm=swarm("OTHER", False))])  # fmt: skip
    assert planned["w2"] is None and planned["w1"] == []
    forced_w2 = host("w2", "10.1.0.3", swarm=swarm("OTHER", False), swarm_force_rejoin=True)
    forced = _plan(managers, [host("w1", "10.1.0.2", swarm=swarm("W1", False)), forced_w2])
    assert commands(forced["w2"]) == [
        "docker swarm leave --force",
        "_join('worker', '10.1.0.3', {'@fake/m1': '10.1.0.1'}, None)",
    ]


def test_managers_in_different_swarms_stop_the_run():
    with pytest.raises(PyinfraError, match="managers are in different swarms"):
        _plan([host("m1", "10.1.0.1", swarm=swarm("M1", True, "c1"), nodes="[]"),
               host("m2", "10.1.0.2", swarm=swarm("M2", True, "c2"), nodes="[]")])  # fmt: skip


def test_a_manager_that_reaches_no_leader_yet_is_not_taken_for_another_swarm():
    """Right after a manager is lost, another can report no cluster until the election is over."""
    electing = json.loads(swarm("M3", True))
    electing["Cluster"] = None
    listing = nodes(node("M2", "m2", "manager"), node("M3", "m3", "manager"))
    planned = _plan([host("m2", "10.1.0.2", swarm=swarm("M2", True), nodes=listing),
                     host("m3", "10.1.0.3", swarm=json.dumps(electing), nodes=listing)])  # fmt: skip
    assert planned["m2"] == [] and planned["m3"] == []


def test_advertise_address_by_interface_name_and_missing_address():
    planned = _plan([host("m1", "eth0", addresses=["2: eth0 inet 10.1.0.1/24 scope global eth0"])])
    assert commands(planned["m1"])[0].startswith("docker swarm init --advertise-addr 10.1.0.1 ")  # eth0's IPv4
    with pytest.raises(PyinfraError, match=re.escape("swarm_advertise_addr 10.9.9.9 is not an address of this host")):
        _plan([host("m1", "10.9.9.9", addresses=["2: eth0 inet 10.1.0.1/24 scope global eth0"])])


def test_an_even_number_of_managers_is_warned_about(caplog):
    _plan([host("m1", "10.1.0.1"), host("m2", "10.1.0.2")])
    assert "2 managers: an even number tolerates no more manager failures than 1" in caplog.text
    caplog.clear()
    _plan([host("m1", "10.1.0.1")])
    assert "even number" not in caplog.text


def test_a_swarm_without_a_leader_is_waited_for_then_reported(monkeypatch):
    """Right after a manager is lost the others can't list nodes: never take that for "another swarm"."""
    monkeypatch.setattr("pyinfra_swarm.plan.managers.LEADER_WAIT", 0.1)
    no_leader = "##pyinfra-swarm-no-node-list##"
    with pytest.raises(PyinfraError, match="no manager of the swarm can list its nodes"):
        _plan([host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=no_leader)],
              [host("w1", "10.1.0.2", swarm=swarm("W1", False))])  # fmt: skip


def test_docker_stopped_on_a_member_is_neither_joined_again_nor_removed():
    down = node("W1", "w1", state="down")
    down["Status"]["Addr"] = "10.1.0.2"
    listing = nodes(node("M1", "m1", "manager"), down)
    stopped = json.dumps({"LocalNodeState": "unknown", "StateOnDisk": True})
    installed = {"packages": {"docker.io": "20.10.24"}, "docker_source": "distro"}
    planned = plan([join_swarm, configure_nodes, install_docker],
                   [host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=listing, docker_running=True, **installed)],
                   [host("w1", "10.1.0.2", swarm=stopped, **installed)])  # fmt: skip
    assert commands(planned["w1"]) == ["systemctl start docker.service", "systemctl enable docker.service"]
    assert not any("node rm" in c for c in commands(planned["m1"]))


def test_quorum_lost_recovers_on_the_manager_that_says_so(monkeypatch, caplog):
    """No leader, and swarm_force_new_cluster on a survivor: it alone runs `--force-new-cluster` this run;
    joins, roles and removals wait for the next (which finds a leader and warns the setting does nothing)."""
    monkeypatch.setattr("pyinfra_swarm.plan.managers.LEADER_WAIT", 0.1)
    no_leader = "##pyinfra-swarm-no-node-list##"
    planned = _plan([host("m1", "10.1.0.1", swarm=swarm("M1", True), nodes=no_leader, swarm_force_new_cluster=True)],
                    [host("w1", "10.1.0.2", swarm=swarm("W1", False)), host("w2", "10.1.0.3")])  # fmt: skip
    assert commands(planned["m1"]) == [
        "docker swarm init --force-new-cluster --advertise-addr 10.1.0.1 --listen-addr 10.1.0.1:2377 >/dev/null"
    ]
    assert commands(planned["w1"]) == [] and commands(planned["w2"]) == []
    assert "quorum is lost: @fake/m1 becomes a one-manager swarm" in caplog.text

    caplog.clear()
    healthy = _plan([host("m1", "10.1.0.1", swarm=swarm("M1", True), swarm_force_new_cluster=True)],
                    [host("w1", "10.1.0.2", swarm=swarm("W1", False))])  # fmt: skip
    assert not any("force-new-cluster" in c for c in commands(healthy["m1"]))
    assert "swarm_force_new_cluster is set for @fake/m1 but the swarm has a leader" in caplog.text
