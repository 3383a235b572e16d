"""`pyinfra-swarm status`: the report from a manager's recorded output, its problems and its JSON schema."""

from __future__ import annotations

import datetime
import json

from pyinfra.api import Config, Inventory, State

from pyinfra_swarm.status import SCHEMA, report

NOW = datetime.datetime(2026, 11, 29, tzinfo=datetime.timezone.utc)


def _node(node_id, hostname, addr, role="worker", state="ready", reachability="reachable", leader=False):
    node = {"ID": node_id, "Description": {"Hostname": hostname, "Engine": {"EngineVersion": "20.10.24"}},
            "Spec": {"Role": role, "Availability": "active", "Labels": {"zone": "a"}},
            "Status": {"State": state, "Addr": addr}}  # fmt: skip
    if role == "manager":
        node["ManagerStatus"] = {"Leader": leader, "Reachability": reachability}
    return node


def _service(service_id, name, replicas):
    return {"ID": service_id, "Spec": {"Name": name, "Labels": {"com.docker.stack.namespace": "demo"},
            "Mode": {"Replicated": {"Replicas": replicas}},
            "TaskTemplate": {"ContainerSpec": {"Image": "10.1.0.1:5000/demo-app:1@sha256:abc"}}},
            "Endpoint": {"Ports": [{"PublishedPort": 8080, "TargetPort": 8080, "Protocol": "tcp",
                                    "PublishMode": "host"}]}}  # fmt: skip


def _state(*hosts):
    managers = [(name, {"swarm_advertise_addr": addr}) for name, addr, role in hosts if role == "manager"]
    workers = [(name, {"swarm_advertise_addr": addr}) for name, addr, role in hosts if role == "worker"]
    inventory = Inventory((managers + workers, {}), swarm_managers=([n for n, _ in managers], {}),
                          swarm_workers=([n for n, _ in workers], {}))  # fmt: skip
    return State(inventory, Config())


HOSTS = [("m1", "10.1.0.1", "manager"), ("m2", "10.1.0.2", "manager"), ("m3", "10.1.0.3", "manager"),
         ("w1", "10.1.0.4", "worker"), ("w2", "10.1.0.5", "worker")]  # fmt: skip


def _output(nodes, services=(), replicas=(), tasks=()):
    return [json.dumps(nodes), "##services##", json.dumps(list(services)), "##replicas##", *replicas, "##tasks##",
            *tasks, "##cert##"]  # fmt: skip


def _healthy_nodes():
    return [_node("M1", "lab-m1", "10.1.0.1", "manager", leader=True), _node("M2", "lab-m2", "10.1.0.2", "manager"),
            _node("M3", "lab-m3", "10.1.0.3", "manager"), _node("W1", "lab-w1", "10.1.0.4"),
            _node("W2", "lab-w2", "10.1.0.5")]  # fmt: skip


def test_a_healthy_three_plus_two_swarm():
    state = _state(*HOSTS)
    tasks = ["t1\tdemo_web.1\tlab-w1\tRunning\tRunning 2 minutes ago\t",
             "t2\tdemo_web.2\tlab-w2\tRunning\tRunning 2 minutes ago\t"]  # fmt: skip
    status = report(state, state.inventory.get_host("m1"), _output(_healthy_nodes(), [_service("S1", "demo_web", 2)],
                    ["demo_web 2/2"], tasks), NOW)  # fmt: skip
    assert status["schema"] == SCHEMA and status["healthy"] and status["problems"] == []
    assert status["quorum"] == {"managers": 3, "reachable": 3, "needed": 2, "tolerates": 1}
    assert [n["inventory_host"] for n in status["nodes"]] == ["m1", "m2", "m3", "w1", "w2"]
    web = status["services"][0]
    assert (web["stack"], web["running"], web["desired"], web["image"]) == ("demo", 2, 2, "10.1.0.1:5000/demo-app:1")
    assert web["ports"] == ["8080:8080/tcp (host)"] and web["last_error"] is None
    assert status["drift"] == {"not_in_swarm": [], "not_in_inventory": [], "down": [], "taken_out": []}


def test_a_lost_manager_puts_quorum_at_risk():
    nodes = _healthy_nodes()
    nodes[1] = _node("M2", "lab-m2", "10.1.0.2", "manager", state="down", reachability="unreachable")
    state = _state(*HOSTS)
    status = report(state, state.inventory.get_host("m1"), _output(nodes), NOW)
    assert not status["healthy"]
    assert "manager lab-m2 is unreachable" in status["problems"]
    assert any(p.startswith("quorum at risk: 2 of 3 managers reachable") for p in status["problems"])
    assert status["drift"]["down"] == ["lab-m2"] and status["drift"]["not_in_swarm"] == []


def test_a_down_worker_and_a_service_below_its_replicas_are_named_with_the_error():
    nodes = _healthy_nodes()
    nodes[4] = _node("W2", "lab-w2", "10.1.0.5", state="down")
    tasks = ["t1\tdemo_web.2\t\tRunning\tPending 3 seconds ago\tno suitable node (max replicas per node limit exceed)",
             "t2\tdemo_web.1\tlab-w1\tRunning\tRunning 2 minutes ago\t"]  # fmt: skip
    state = _state(*HOSTS)
    status = report(state, state.inventory.get_host("m1"), _output(nodes, [_service("S1", "demo_web", 2)],
                    ["demo_web 1/2"], tasks), NOW)  # fmt: skip
    assert "node lab-w2 is down" in status["problems"]
    assert ("service demo_web runs 1/2: no suitable node (max replicas per node limit exceed)"
            in status["problems"])  # fmt: skip


def test_drift_between_the_inventory_and_the_swarm():
    nodes = [*_healthy_nodes(), _node("X", "stranger", "10.1.0.99")]
    state = _state(*HOSTS, ("w3", "10.1.0.6", "worker"))
    status = report(state, state.inventory.get_host("m1"), _output(nodes), NOW)
    assert status["drift"]["not_in_swarm"] == ["w3"] and status["drift"]["not_in_inventory"] == ["stranger"]
    assert not status["healthy"]


def test_a_single_manager_is_a_warning_not_a_problem():
    state = _state(("m1", "10.1.0.1", "manager"))
    nodes = [_node("M1", "lab-m1", "10.1.0.1", "manager", leader=True)]
    status = report(state, state.inventory.get_host("m1"), _output(nodes), NOW)
    assert status["healthy"] and status["warnings"][0].startswith("a single manager")


def test_a_task_still_running_on_a_down_node_does_not_count():
    nodes = _healthy_nodes()
    nodes[4] = _node("W2", "lab-w2", "10.1.0.5", state="down")
    tasks = ["t2\tpinned.1\t\tRunning\tPending 9 seconds ago\t\"no suitable node (1 node not available)\"",
             "t1\tpinned.1\tlab-w2\tShutdown\tRunning 33 seconds ago\t"]  # fmt: skip
    state = _state(*HOSTS)
    status = report(state, state.inventory.get_host("m1"), _output(nodes, [_service("S1", "pinned", 1)], ["pinned 1/1"],
                    tasks), NOW)  # fmt: skip
    assert 'service pinned runs 0/1: "no suitable node (1 node not available)"' in status["problems"]


def test_a_host_that_data_takes_out_is_not_drift():
    state = _state(*HOSTS)
    state.inventory.get_host("w2").data.swarm_state = "absent"
    gone = report(state, state.inventory.get_host("m1"), _output(_healthy_nodes()[:4]), NOW)
    assert gone["healthy"] and gone["drift"]["not_in_swarm"] == []
    leaving = report(state, state.inventory.get_host("m1"), _output(_healthy_nodes()), NOW)
    assert leaving["healthy"] and leaving["drift"]["taken_out"] == ["w2"]
    assert "still in the swarm, though data takes them out (swarm_state: absent): w2" in leaving["warnings"][0]


def _lock_output(silent: int) -> list[str]:
    labels = {"pyinfra-swarm.lock.who": "ci@runner (pid 7)", "pyinfra-swarm.lock.what": "pyinfra inv.py deploy.py",
              "pyinfra-swarm.lock.since": "2026-11-29T00:00:00Z", "pyinfra-swarm.lock.run": "r1"}  # fmt: skip
    return ["##lock##", f"holder {json.dumps(labels)} 1000", f"now {1000 + silent}"]


def test_what_an_unfinished_run_left_and_the_lock_are_reported():
    nodes = _healthy_nodes()
    nodes[3]["Spec"].update(Availability="drain", Labels={"pyinfra-swarm.drained": "ci@runner (pid 7) since T",
                                                          "pyinfra-swarm.restore": "active"})  # fmt: skip
    nodes[4]["Spec"]["Availability"] = "pause"
    engines = {"m1": {"pending": []}, "m2": {"pending": ["a new daemon.json waits for its turn"]}, "m3": None}
    state = _state(*HOSTS)
    status = report(state, state.inventory.get_host("m1"), _output(nodes) + _lock_output(30), NOW, engines)
    assert not status["healthy"]
    assert status["problems"] == [
        "node lab-m2: its engine must restart (a new daemon.json waits for its turn): the next deploy does it, in the "
        "node's turn",
        "node lab-w1 was left drained by a run that did not end its turn (ci@runner (pid 7) since T): the next "
        "deploy gives it back",
    ]
    assert "node lab-w2 is pause, not by the deploy (by hand?): the deploy leaves it so" in status["warnings"]
    assert ("a run holds the cluster lock: ci@runner (pid 7), `pyinfra inv.py deploy.py` since 2026-11-29T00:00:00Z"
            in status["warnings"])  # fmt: skip
    assert status["lock"]["silent"] == 30 and [n["pending"] for n in status["nodes"]][:3] == [
        [],
        ["a new daemon.json waits for its turn"],
        None,
    ]


def test_a_lock_without_heartbeat_is_a_killed_runs():
    state = _state(*HOSTS)
    status = report(state, state.inventory.get_host("m1"), _output(_healthy_nodes()) + _lock_output(700), NOW)
    assert not status["healthy"] and "has had no heartbeat for 700 s: a run that was killed" in status["problems"][0]


def test_engine_versions_per_node_and_mixed_generations_flagged():
    from pyinfra_swarm.facts import EngineVersions

    fact = EngineVersions()
    new = fact.process([json.dumps({"Version": "28.5.2", "ApiVersion": "1.51", "Components": [
        {"Name": "Engine", "Version": "28.5.2"}, {"Name": "containerd", "Version": "2.1.9"}]}),
        fact.SEPARATOR, json.dumps({"FirewallBackend": {"Driver": "iptables", "Info": []}})])  # fmt: skip
    assert new == {"version": "28.5.2", "api": "1.51", "containerd": "2.1.9", "firewall_backend": "iptables"}
    old = fact.process([json.dumps({"Version": "26.1.5", "ApiVersion": "1.45"}), fact.SEPARATOR, "{}"])
    assert old["firewall_backend"] is None and old["api"] == "1.45"
    assert fact.process([]) == fact.default()  # no engine answered

    nodes = _healthy_nodes()
    for node in nodes[3:]:
        node["Description"]["Engine"]["EngineVersion"] = "29.1.3"
    engines = {"w1": {"pending": [], "versions": new}}
    state = _state(*HOSTS)
    status = report(state, state.inventory.get_host("m1"), _output(nodes), NOW, engines)
    w1 = status["nodes"][3]
    assert (w1["api"], w1["containerd"], w1["firewall_backend"]) == ("1.51", "2.1.9", "iptables")
    assert status["nodes"][0]["api"] is None  # its host did not report
    assert status["healthy"] and status["warnings"] == [
        "engines of different generations (20.x: lab-m1, lab-m2, lab-m3; 29.x: lab-w1, lab-w2): finish the upgrade "
        "(docker_version)",
        "no encrypted overlay traffic passes between lab-w1, lab-w2 and the other nodes: their engines (29.0.0 to "
        "29.2.0, 28.2.2, 25.0.13 and 25.0.14) compute IPsec SPIs unlike the others' (moby#51798)",
    ]
    for node in nodes[3:]:
        node["Description"]["Engine"]["EngineVersion"] = "29.3.0"  # fixed: on the side of the older engines
    status = report(state, state.inventory.get_host("m1"), _output(nodes), NOW, engines)
    assert status["warnings"] == [status["warnings"][0]] and "moby#51798" not in status["warnings"][0]
