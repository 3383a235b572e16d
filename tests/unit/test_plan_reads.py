"""What planning reads from each host, counted on pyinfra's fake connector while the whole deploy is planned:
every fact of this package comes from the plan's Bundle, one command per host plus one for what depends on the
plan where there is any; deploy code reads none on its own. (pyinfra's own operations read their facts for the
changes they plan; a converged cluster plans none: the e2e no-op runs and `make bench` count those commands.)"""

from __future__ import annotations

from collections import Counter

import pytest
from pyinfra.api import Host

from pyinfra_swarm.deploys.cluster import swarm_cluster
from tests.unit.fakes import host, plan
from tests.unit.test_swarm import node, nodes, swarm


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """(host, fact) -> how many times planning read it; a Bundle counts as "Bundle", this package's other
    facts by class name, pyinfra's own as "pyinfra"."""
    seen: Counter = Counter()
    get_fact = Host.get_fact

    def counting(self, cls, *args, **kwargs):
        ours = cls.__module__.startswith("pyinfra_swarm")
        seen[(self.name.removeprefix("@fake/"), cls.__name__ if ours else "pyinfra")] += 1
        return get_fact(self, cls, *args, **kwargs)

    monkeypatch.setattr(Host, "get_fact", counting)
    return seen


def ours(reads: Counter) -> dict[tuple[str, str], int]:
    return {key: count for key, count in reads.items() if key[1] != "pyinfra"}


def cluster_only(**data):
    return {"registry_mode": None, "docker_image_archives": [], "swarm_stacks": [], **data}


def test_a_formed_cluster_is_read_in_one_command_per_host(reads: Counter) -> None:
    members = nodes(node("m1", "m1", "manager"), node("w1", "w1"), node("w2", "w2"), node("w3", "w3"))
    manager = host("m1", "10.1.0.1", swarm=swarm("m1", True), nodes=members, docker_running=True,
                   **cluster_only())  # fmt: skip
    workers = [host(f"w{i}", f"10.1.0.{i + 1}", swarm=swarm(f"w{i}", False), docker_running=True, **cluster_only())
               for i in (1, 2, 3)]  # fmt: skip
    planned = plan([swarm_cluster], [manager], workers)
    assert all(steps is not None for steps in planned.values())
    assert ours(reads) == {(name, "Bundle"): 1 for name in ("m1", "w1", "w2", "w3")}


def test_new_hosts_read_one_more_command_only_for_what_depends_on_the_plan(reads: Counter) -> None:
    manager = host("m1", "10.1.0.1", **cluster_only())
    workers = [host(f"w{i}", f"10.1.0.{i + 1}", **cluster_only()) for i in (1, 2, 3)]
    plan([swarm_cluster], [manager], workers)
    # m1 inits (nothing there depends on the plan); each worker also pings the manager it joins through.
    assert ours(reads) == {("m1", "Bundle"): 1, **{(f"w{i}", "Bundle"): 2 for i in (1, 2, 3)}}


def test_workloads_are_read_in_one_more_command_on_the_acting_manager(reads: Counter) -> None:
    members = nodes(node("m1", "m1", "manager"), node("w1", "w1"))
    data = cluster_only(swarm_networks={"backend": {"attachable": True}})
    manager = host("m1", "10.1.0.1", swarm=swarm("m1", True), nodes=members, docker_running=True, **data)
    worker = host("w1", "10.1.0.2", swarm=swarm("w1", False), docker_running=True, **data)
    plan([swarm_cluster], [manager], [worker])
    assert ours(reads) == {("m1", "Bundle"): 2, ("w1", "Bundle"): 1}


def test_a_bundle_reads_the_firewall_front_end_only_where_data_may_use_it() -> None:
    from pyinfra_swarm.plan.observe import firewall_facts

    assert set(firewall_facts("auto")) == {"ufw", "firewalld_zone"}
    assert set(firewall_facts("ufw")) == {"ufw"}
    assert firewall_facts("iptables") == firewall_facts(False) == {}


@pytest.fixture
def node_lists(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How many commands asked each fake host for the swarm's node list while planning."""
    from pyinfra.connectors.fake import FakeConnector

    seen: Counter = Counter()
    run = FakeConnector.run_shell_command

    def counting(self, command, *args, **kwargs):
        if "/nodes" in str(command) or "docker node inspect" in str(command):
            seen[self.host.name.removeprefix("@fake/")] += 1
        return run(self, command, *args, **kwargs)

    monkeypatch.setattr(FakeConnector, "run_shell_command", counting)
    return seen


def _three_managers() -> tuple[list, list]:
    members = nodes(node("m1", "m1", "manager"), node("m2", "m2", "manager"), node("m3", "m3", "manager"),
                    node("w1", "w1"))  # fmt: skip
    managers = [host(f"m{i}", f"10.1.0.{i}", swarm=swarm(f"m{i}", True), nodes=members, docker_running=True,
                     **cluster_only()) for i in (1, 2, 3)]  # fmt: skip
    return managers, [host("w1", "10.1.0.9", swarm=swarm("w1", False), docker_running=True, **cluster_only())]


def test_only_the_manager_that_acts_lists_the_nodes(node_lists: Counter) -> None:
    managers, workers = _three_managers()
    planned = plan([swarm_cluster], managers, workers)
    assert all(steps is not None for steps in planned.values())
    assert node_lists == Counter({"m1": 1})
    node_lists.clear()
    plan([swarm_cluster], *_three_managers(), limit=["m2", "w1"])  # m1 is read, not changed: m2 acts
    assert node_lists == Counter({"m2": 1})


def test_hosts_are_read_no_more_at_once_than_parallel_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    import gevent

    running, most = 0, 0
    get_fact = Host.get_fact

    def slow(self, cls, *args, **kwargs):
        nonlocal running, most
        running += 1
        most = max(most, running)
        gevent.sleep(0.01)
        try:
            return get_fact(self, cls, *args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(Host, "get_fact", slow)
    workers = [host(f"w{i}", f"10.1.0.{i + 1}", **cluster_only()) for i in range(1, 7)]
    plan([swarm_cluster], [host("m1", "10.1.0.1", **cluster_only())], workers, parallel=3)
    assert most == 3


def test_a_limited_run_reads_the_managers_and_hosts_to_take_out_not_other_workers(reads: Counter) -> None:
    members = nodes(node("m1", "m1", "manager"), *(node(f"w{i}", f"w{i}") for i in (1, 2, 3)))
    manager = host("m1", "10.1.0.1", swarm=swarm("m1", True), nodes=members, docker_running=True, **cluster_only())
    workers = [host(f"w{i}", f"10.1.0.{i + 1}", swarm=swarm(f"w{i}", False), docker_running=True, **cluster_only())
               for i in (1, 2)]  # fmt: skip
    leaving = host("w3", "10.1.0.4", swarm=swarm("w3", False), docker_running=True, swarm_state="absent",
                   **cluster_only())  # fmt: skip
    named = host("w4", "10.1.0.5", swarm=swarm("w4", False), docker_running=True, swarm_advertise_addr="eth0",
                 **cluster_only())  # fmt: skip
    planned = plan([swarm_cluster], [manager], [*workers, leaving, named], limit=["w1"])
    assert planned["w1"] is not None
    assert {name for name, _ in ours(reads)} == {"m1", "w1", "w3", "w4"}  # w2 is not read
