"""The plan-time view of the whole cluster, built once per run from every reachable host's facts and shared
by all hosts' deploy code: who is in which swarm, which manager acts for the cluster, every node's address."""

from __future__ import annotations

import ipaddress
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.lock import BoundedSemaphore
from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.api.exceptions import DeployError
from pyinfra.context import ctx_host
from pyinfra.facts.server import Hostname

from pyinfra_swarm.facts import DockerSwarm, HostAddresses, KernelFeatures, SwarmNodes
from pyinfra_swarm.hostfacts import gather, register
from pyinfra_swarm.settings import is_manager, setting, swarm_hosts, validate_inventory

_VIEWS: weakref.WeakKeyDictionary[State, Cluster] = weakref.WeakKeyDictionary()
_BUILD_LOCK = BoundedSemaphore()
LEADER_WAIT = 45.0  # seconds to wait for a leader election before giving up

register("hostname", Hostname)
register("addresses", HostAddresses)
register("swarm", DockerSwarm)
register("kernel", KernelFeatures)


@dataclass
class Cluster:
    hosts: list[Host]  # every swarm host in the inventory, managers first
    reachable: list[Host]  # those pyinfra is connected to
    addresses: dict[Host, str]  # resolved advertise addresses (IP form)
    hostnames: dict[Host, str]
    swarm: dict[Host, dict[str, Any] | None]  # DockerSwarm fact of each reachable host
    kernel: dict[Host, dict[str, bool | None]]  # KernelFeatures fact of each reachable host
    primary: Host | None  # a reachable manager already in the swarm: cluster-wide changes run there
    init_host: Host | None  # the manager that initialises the swarm, when no manager is in one yet
    cluster_id: str | None
    nodes: list[dict[str, Any]] = field(default_factory=list)  # the primary's node list
    plan: dict[Host, str] = field(default_factory=dict)  # membership step of each reachable host (see plan_for)

    @property
    def managers(self) -> list[Host]:
        return [h for h in self.hosts if is_manager(h)]

    @property
    def acting_manager(self) -> Host | None:
        """The manager that runs cluster-wide changes (labels, roles) this run."""
        return self.primary or self.init_host

    def node_of(self, host: Host) -> dict[str, Any] | None:
        """The swarm node entry of a host that is in this swarm (matched by its node ID)."""
        info = self.swarm.get(host) or {}
        return next((n for n in self.nodes if n["id"] == info.get("NodeID")), None)

    def in_this_swarm(self, host: Host) -> bool:
        info = self.swarm.get(host) or {}
        return info.get("LocalNodeState") == "active" and self.node_of(host) is not None

    def peers(self) -> list[str]:
        return sorted(set(self.addresses.values()), key=ipaddress.ip_address)


def current_host() -> Host:
    """The Host being deployed: `pyinfra.host` is a context proxy, which `is` never matches."""
    return ctx_host.get()


def cluster(state: State) -> Cluster:
    """The cluster view of this run (built by the first host's deploy code, reused by the others)."""
    with _BUILD_LOCK:  # every host's deploy code runs in its own greenlet: build the view only once
        if state not in _VIEWS:
            validate_inventory(state)
            _VIEWS[state] = _build(state)
        return _VIEWS[state]


def _build(state: State) -> Cluster:
    hosts = swarm_hosts(state)
    reachable = [h for h in hosts if h in state.active_hosts]
    for host in hosts:
        if host not in reachable:
            logger.warning(f"{host.name} is not connected (unreachable, or outside --limit): left as it is this run")
    facts = gather(state, reachable)
    swarm = {h: facts[h]["swarm"] for h in reachable}
    hostnames = {h: facts[h]["hostname"] for h in reachable}
    kernel = {h: facts[h]["kernel"] for h in reachable}
    addresses = {}
    for host in hosts:
        address = resolve_address(host, facts[host]["addresses"] if host in reachable else None)
        if address:
            addresses[host] = address
    _check_unique_hostnames(hostnames)

    info = {h: swarm[h] or {} for h in reachable}
    in_swarm = [
        h for h in reachable
        if is_manager(h) and info[h].get("LocalNodeState") == "active" and info[h].get("ControlAvailable")
    ]  # fmt: skip
    cluster_ids = {info[h].get("Cluster", {}).get("ID") for h in in_swarm}
    if len(cluster_ids) > 1:
        names = ", ".join(f"{h.name} ({info[h].get('Cluster', {}).get('ID')})" for h in in_swarm)
        raise DeployError(
            f"the inventory's managers are in different swarms: {names}. Fix the inventory, or make the odd "
            "ones leave (docker swarm leave --force) before running the deploy"
        )
    primary = in_swarm[0] if in_swarm else None
    init_host = None
    if primary is None:
        locked = [h.name for h in reachable if info[h].get("LocalNodeState") == "locked"]
        if locked:
            raise DeployError(
                f"the swarm is locked on {', '.join(locked)}: unlock it (docker swarm unlock) and run again"
            )
        # Not in a swarm: no Docker yet (None), Docker stopped ("unknown": the install step starts it), inactive.
        free = (None, "unknown", "inactive")
        init_host = next((h for h in reachable if is_manager(h) and info[h].get("LocalNodeState") in free), None)
        if init_host is None:
            raise DeployError(
                "no reachable manager can start or reach the swarm: every manager in the inventory is "
                "unreachable or a worker of another swarm"
            )
    view = Cluster(
        hosts=hosts,
        reachable=reachable,
        addresses=addresses,
        hostnames=hostnames,
        swarm=swarm,
        kernel=kernel,
        primary=primary,
        init_host=init_host,
        cluster_id=cluster_ids.pop() if primary else None,
        nodes=_node_list(in_swarm) if primary else [],
    )
    view.plan = {host: plan_for(view, host) for host in reachable}
    managers = len(view.managers)
    if managers % 2 == 0:
        logger.warning(
            f"{managers} managers: an even number tolerates no more manager failures than {managers - 1}; "
            "use an odd number (3 or 5)"
        )
    return view


def _node_list(managers: list[Host]) -> list[dict[str, Any]]:
    """The node list from the first of `managers` that gives one. Right after a manager is lost the others
    can't list nodes until they elect a leader (~10-20 s): wait for that rather than misjudge every host as
    being in another swarm."""
    deadline = time.monotonic() + LEADER_WAIT
    while True:
        for manager in managers:
            nodes = manager.get_fact(SwarmNodes)
            if nodes:
                return nodes
        if time.monotonic() > deadline:
            raise DeployError(
                f"no manager of the swarm can list its nodes after {LEADER_WAIT:.0f} s: the swarm has no leader "
                f"(managers reached: {', '.join(m.name for m in managers)}). Fewer than half the managers may be up: "
                "bring managers back, or recover with `docker swarm init --force-new-cluster` on one of them"
            )
        logger.warning("the swarm has no leader yet (a manager was lost?): waiting for the election")
        gevent.sleep(3)


def plan_for(view: Cluster, host: Host) -> str:
    """What joining this swarm takes for a host: "member" (nothing), "init", "join", "rejoin" (leave the other
    swarm first, as swarm_force_rejoin allows) or "foreign" (in another swarm: the host is stopped)."""
    if host is view.init_host:
        return "init"
    if view.in_this_swarm(host):
        return "member"
    local = (view.swarm.get(host) or {}).get("LocalNodeState")
    if local in (None, "inactive", "unknown"):
        return "join"
    return "rejoin" if setting(host, "swarm_force_rejoin") else "foreign"


def resolve_address(host: Host, interfaces: dict[str, list[str]] | None) -> str | None:
    """The host's advertise address as an IP: as given, or the first IPv4 of the named interface.
    Checks that the address is on the host when the host's interfaces are known."""
    value = setting(host, "swarm_advertise_addr")
    all_addresses = {a for addrs in (interfaces or {}).values() for a in addrs}
    if value in all_addresses or (interfaces is None and _is_ip(value)):
        return value
    if interfaces is None:
        return None  # an interface name on an unreachable host
    if _is_ip(value):
        raise DeployError(
            f"host {host.name}: swarm_advertise_addr {value} is not an address of this host "
            f"(it has {', '.join(sorted(all_addresses)) or 'none'})"
        )
    ipv4 = [a for a in interfaces.get(value, []) if ipaddress.ip_address(a).version == 4]
    if not ipv4:
        raise DeployError(
            f"host {host.name}: swarm_advertise_addr {value!r}: no interface of that name with an IPv4 address "
            f"(interfaces: {', '.join(sorted(interfaces))})"
        )
    return ipv4[0]


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_unique_hostnames(hostnames: dict[Host, str]) -> None:
    seen: dict[str, str] = {}
    for host, hostname in hostnames.items():
        if hostname in seen:
            raise DeployError(
                f"hosts {seen[hostname]} and {host.name} have the same hostname {hostname!r}: swarm nodes are "
                "named by hostname, give each a unique one"
            )
        seen[hostname] = host.name
