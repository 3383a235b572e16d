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

from pyinfra_swarm.facts import Clock, DockerSwarm, HostAddresses, InterfaceMtus, KernelFeatures, SwarmNodes
from pyinfra_swarm.hostfacts import gather, register
from pyinfra_swarm.settings import is_manager, setting, swarm_hosts, validate_inventory

_VIEWS: weakref.WeakKeyDictionary[State, Cluster] = weakref.WeakKeyDictionary()
_BUILD_LOCK = BoundedSemaphore()
LEADER_WAIT = 45.0  # seconds to wait for a leader election before giving up

register("hostname", Hostname)
register("addresses", HostAddresses)
register("swarm", DockerSwarm)
register("kernel", KernelFeatures)
register("mtus", InterfaceMtus)
register("clock", Clock)
CLOCK_SKEW = 10.0  # seconds between a host's clock and the controller's worth a warning


@dataclass
class Cluster:
    hosts: list[Host]  # every swarm host in the inventory, managers first
    reachable: list[Host]  # those pyinfra is connected to (hosts outside --limit are read, never changed)
    addresses: dict[Host, str]  # resolved advertise addresses (IP form)
    hostnames: dict[Host, str]
    swarm: dict[Host, dict[str, Any] | None]  # DockerSwarm fact of each reachable host
    kernel: dict[Host, dict[str, bool | None]]  # KernelFeatures fact of each reachable host
    primary: Host | None  # a reachable manager already in the swarm: cluster-wide changes run there
    init_host: Host | None  # the manager that initialises the swarm, when no manager is in one yet
    cluster_id: str | None
    in_limit: list[Host] = field(default_factory=list)  # the hosts this run may change (all without --limit)
    data_path_port: int = 4789  # the VXLAN port the swarm uses (or will use, once initialised)
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


def _connect_outside_limit(state: State, hosts: list[Host]) -> list[Host]:
    """Connect to the swarm hosts outside --limit, to read their state (nothing runs on them): without
    that, a run limited to a new manager would not see the swarm the others are in. Returns those reached."""
    outside = [h for h in hosts if not state.is_host_in_limit(h) and not h.connected]
    greenlets = [gevent.spawn(h.connect, show_errors=False) for h in outside]
    gevent.joinall(greenlets)
    return [h for h in outside if h.connected]


def _build(state: State) -> Cluster:
    hosts = swarm_hosts(state)
    in_limit = [h for h in hosts if state.is_host_in_limit(h)]
    read_only = _connect_outside_limit(state, hosts) if len(in_limit) < len(hosts) else []
    reachable = [h for h in hosts if h in state.active_hosts or h in read_only]
    for host in hosts:
        if host not in reachable:
            logger.warning(f"{host.name} is unreachable: left as it is this run")
        elif host not in in_limit:
            logger.info(f"{host.name} is outside --limit: read, not changed")
    controller_time = time.time()
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
    _warn_clock_skew({h: facts[h]["clock"] for h in reachable}, controller_time)
    _warn_small_mtu(addresses, {h: (facts[h]["addresses"], facts[h]["mtus"]) for h in reachable})

    info = {h: swarm[h] or {} for h in reachable}
    in_swarm = [
        h for h in reachable
        if is_manager(h) and info[h].get("LocalNodeState") == "active" and info[h].get("ControlAvailable")
    ]  # fmt: skip
    in_swarm.sort(key=lambda h: h not in in_limit)  # act through a manager this run may change, if any
    cluster_ids = {info[h].get("Cluster", {}).get("ID") for h in in_swarm}
    if len(cluster_ids) > 1:
        names = ", ".join(f"{h.name} ({info[h].get('Cluster', {}).get('ID')})" for h in in_swarm)
        raise DeployError(
            f"the inventory's managers are in different swarms: {names}. Fix the inventory, or make the odd "
            "ones leave (docker swarm leave --force) before running the deploy"
        )
    primary = in_swarm[0] if in_swarm else None
    init_host = None if primary else _init_host(hosts, reachable, in_limit, info)
    first = primary or init_host
    assert first is not None  # _init_host raises when there is none
    if primary is not None:
        _check_init_settings(primary, info[primary].get("Cluster") or {})
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
        in_limit=in_limit,
        data_path_port=int(((info[primary].get("Cluster") or {}) if primary else {}).get("DataPathPort") or 0)
        or setting(first, "swarm_data_path_port"),
        nodes=_node_list(in_swarm) if primary else [],
    )
    view.plan = {host: plan_for(view, host) for host in reachable}
    managers = len(view.managers)
    if managers % 2 == 0:
        logger.warning(
            f"{managers} managers: an even number tolerates no more manager failures than {managers - 1}; "
            "use an odd number (3 or 5)"
        )
    if primary is not None and primary not in in_limit:
        logger.warning(
            f"cluster-wide steps (node roles and labels, registry, stacks) run on {primary.name}, which is outside "
            "--limit: skipped this run"
        )
    return view


def _init_host(hosts: list[Host], reachable: list[Host], in_limit: list[Host], info: dict[Host, dict]) -> Host:
    """The manager that runs `swarm init`, when no reachable manager is in a swarm. Refused while a manager
    of the inventory could be in a swarm that this run can't see (unreachable, Docker stopped with swarm
    state on disk, locked), unless `swarm_bootstrap` says to start a new swarm anyway: a second swarm beside
    a live one (split brain) is the worst thing a deploy can do."""
    managers = [h for h in hosts if is_manager(h)]
    locked = [h.name for h in reachable if info[h].get("LocalNodeState") == "locked"]
    if locked:
        raise DeployError(
            f"the swarm is locked on {', '.join(locked)} (autolock, after a restart): unlock it with "
            "`docker swarm unlock` and the unlock key, then run again"
        )
    # Not in a swarm: no Docker yet (None), Docker stopped ("unknown": the install step starts it), inactive.
    free = (None, "unknown", "inactive")
    candidates = [h for h in managers if h in reachable and (info[h].get("LocalNodeState") in free)]
    unseen = [h for h in managers if h not in reachable]
    stopped = [h for h in candidates if (info[h] or {}).get("StateOnDisk")]
    if (unseen or stopped) and not any(setting(h, "swarm_bootstrap") for h in candidates):
        reasons = [f"{h.name} (unreachable)" for h in unseen]
        reasons += [f"{h.name} (Docker stopped, swarm state on disk: start Docker there)" for h in stopped]
        raise DeployError(
            "no reachable manager is in a swarm, but these managers could be: " + ", ".join(reasons) + ". "
            "Starting a new swarm now could split the cluster in two. Bring them back and run again, or set "
            "swarm_bootstrap: true to start a new swarm without them"
        )
    init_host = next((h for h in candidates if h not in stopped), None)
    if init_host is None:
        raise DeployError(
            "no reachable manager can start or reach the swarm: every manager in the inventory is "
            "unreachable or a worker of another swarm"
        )
    if init_host not in in_limit:
        raise DeployError(
            f"the swarm would be initialised on {init_host.name}, which is outside --limit: run without --limit "
            "(or include it) to create the swarm"
        )
    return init_host


def _check_init_settings(primary: Host, swarm_cluster: dict[str, Any]) -> None:
    """Settings that only take effect at `swarm init` must match the running swarm: a difference is an error
    before any change (the firewall would otherwise open a port the swarm doesn't use)."""
    problems = []
    port = swarm_cluster.get("DataPathPort")
    if port and setting(primary, "swarm_data_path_port") != port:
        problems.append(f"swarm_data_path_port is {setting(primary, 'swarm_data_path_port')}, the swarm uses {port}")
    pools = setting(primary, "swarm_default_addr_pool")
    if pools and swarm_cluster.get("DefaultAddrPool") and sorted(pools) != sorted(swarm_cluster["DefaultAddrPool"]):
        problems.append(f"swarm_default_addr_pool is {pools}, the swarm uses {swarm_cluster['DefaultAddrPool']}")
    mask = setting(primary, "swarm_default_addr_pool_mask_length")
    if mask and swarm_cluster.get("SubnetSize") and mask != swarm_cluster["SubnetSize"]:
        problems.append(f"swarm_default_addr_pool_mask_length is {mask}, the swarm uses {swarm_cluster['SubnetSize']}")
    if problems:
        raise DeployError(
            "settings that only apply at `swarm init` differ from the running swarm: "
            + "; ".join(problems)
            + ". Set them to what the swarm uses (changing them means a new swarm)"
        )


def _warn_clock_skew(clocks: dict[Host, float | None], controller_time: float) -> None:
    """Swarm's TLS certificates and raft need clocks that agree: name the hosts whose clock is off."""
    for host, clock in clocks.items():
        if clock is not None and abs(clock - controller_time) > CLOCK_SKEW:
            logger.warning(
                f"{host.name}: its clock is {clock - controller_time:+.0f} s off this machine's: swarm node "
                "certificates may be refused; run NTP (systemd-timesyncd, chrony) on every node"
            )


def _warn_small_mtu(addresses: dict[Host, str], links: dict[Host, tuple[dict, dict]]) -> None:
    """Overlay traffic carries 50 bytes of VXLAN headers: on an underlay MTU below 1500 the overlays' default
    of 1500 drops large packets unless the networks set a smaller `mtu`."""
    for host, (interfaces, mtus) in links.items():
        name = next((i for i, addrs in interfaces.items() if addresses.get(host) in addrs), None)
        mtu = mtus.get(name) if name else None
        if mtu is not None and mtu < 1500:
            logger.warning(
                f"{host.name}: {name} has MTU {mtu}: overlay networks need mtu {mtu - 50} or less "
                "(swarm_networks: {NAME: {mtu: ...}}, and com.docker.network.driver.mtu in stacks)"
            )


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
    swarm first, as swarm_force_rejoin allows), "locked" (autolocked after a restart: it must be unlocked,
    never made to leave), "pending" (a join under way or stuck) or "foreign" (in another swarm); hosts in
    the last three states are stopped with the reason."""
    if host is view.init_host:
        return "init"
    if view.in_this_swarm(host):
        return "member"
    local = (view.swarm.get(host) or {}).get("LocalNodeState")
    if local in (None, "inactive", "unknown"):
        return "join"
    if local == "locked":
        return "locked"
    if local == "pending" and not setting(host, "swarm_force_rejoin"):
        return "pending"
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
