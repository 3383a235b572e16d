"""The plan of the cluster, made once per run by `plan_cluster()` from what every reachable host says, and
handed to every step: who is in which swarm, who inits and who joins through whom, which manager acts for
the cluster, every node's address, where the registry runs. Everything the steps read from the hosts is
gathered here, in ONE command per host (all hosts at once), plus one more for what depends on the plan
(the registry's files, images, stacks) when the data asks for workloads."""

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
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.server import Hostname

from pyinfra_swarm import pki
from pyinfra_swarm.facts import (
    Bundle,
    Clock,
    DockerDaemonConfig,
    DockerPackages,
    DockerSwarm,
    EngineState,
    ExistingUsers,
    FileHashes,
    FirewallTools,
    HostAddresses,
    ImageContexts,
    InterfaceMtus,
    KernelFeatures,
    RegistryLogins,
    ServiceStates,
    Spec,
    SshdPorts,
    StackServices,
    SwarmNodes,
    SwarmObjects,
    SwarmStacks,
    remember,
)
from pyinfra_swarm.lock import PKI_RECORD, ClusterLock, record_pki
from pyinfra_swarm.lock import take as take_lock
from pyinfra_swarm.operations.firewall import UNIT as FIREWALL_UNIT
from pyinfra_swarm.operations.firewall import UNIT_FILE as FIREWALL_UNIT_FILE
from pyinfra_swarm.operations.packages import source_paths
from pyinfra_swarm.settings import is_ip, is_manager, setting, swarm_hosts, validate_inventory

LEADER_WAIT = 45.0  # seconds to wait for a leader election before giving up
CLOCK_SKEW = 10.0  # seconds between a host's clock and the controller's worth a warning

# Where pyinfra-swarm keeps things on the nodes.
RULES_DIR = "/etc/pyinfra-swarm"
IPTABLES_RULES = f"{RULES_DIR}/firewall.sh"
NFT_RULES = f"{RULES_DIR}/firewall.nft"
STACKS_DIR = f"{RULES_DIR}/stacks"

# Docker's packages and the ones they conflict with (Docker's install guide lists these).
DOCKER_CE_PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"]
APT_CONFLICTS = [
    "docker.io", "docker-cli", "docker-doc", "docker-compose", "docker-compose-v2", "podman-docker", "containerd",
    "runc",
]  # fmt: skip
DNF_CONFLICTS = [
    "docker", "docker-client", "docker-client-latest", "docker-common", "docker-latest", "docker-latest-logrotate",
    "docker-logrotate", "docker-engine", "podman", "runc", "moby-engine",
]  # fmt: skip
PACKAGES = sorted(set(DOCKER_CE_PACKAGES + APT_CONFLICTS + DNF_CONFLICTS + ["apparmor", "curl", "ca-certificates"]))
DOCKER_APT_SOURCE, DOCKER_APT_KEY = source_paths("docker")
ENGINE_PACKAGES = sorted(set([*DOCKER_CE_PACKAGES, "docker.io", "containerd", "runc"]))  # what a purge removes

# Everything the steps read from every swarm host, gathered in one Bundle command per host.
HOST_FACTS: Spec = {
    "hostname": (Hostname, {}),
    "addresses": (HostAddresses, {}),
    "swarm": (DockerSwarm, {}),
    "kernel": (KernelFeatures, {}),
    "mtus": (InterfaceMtus, {}),
    "clock": (Clock, {}),
    "daemon_config": (DockerDaemonConfig, {}),
    "firewall": (FirewallTools, {}),
    "firewall_files": (FileHashes, {"paths": [IPTABLES_RULES, NFT_RULES, FIREWALL_UNIT_FILE]}),
    "sshd_ports": (SshdPorts, {}),
    "packages": (DockerPackages, {"packages": PACKAGES}),
    "apt_source": (FileHashes, {"paths": [DOCKER_APT_SOURCE, DOCKER_APT_KEY]}),
    "services": (ServiceStates, {"services": ["docker.service", FIREWALL_UNIT]}),
    "engine": (EngineState, {}),
}
# Managers also list the swarm's nodes in the same command (nothing when they aren't in one).
MANAGER_FACTS: Spec = {**HOST_FACTS, "nodes": (SwarmNodes, {})}


def stack_path(name: str) -> str:
    """Where a stack's rendered file lives on the acting manager."""
    return f"{STACKS_DIR}/{name}.yml"


def ca_path(registry: str) -> str:
    """Where a node trusts the registry's CA."""
    return f"/etc/docker/certs.d/{registry}/ca.crt"


def image_references(registry: str, entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """REGISTRY/NAME:TAG (NAME:TAG without a registry) -> its docker_images entry."""
    return {f"{registry + '/' if registry else ''}{e['name']}:{e['tag']}": e for e in entries}


def archives_for(target: Host, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The docker_image_archives entries meant for a host (its group, or all)."""
    return [e for e in entries if e.get("group", "all") == "all" or e.get("group") in target.groups]


@dataclass
class Registry:
    """Where the cluster's registry runs and how it is reached."""

    host: Host
    address: str  # HOST:PORT, the registry's node's advertise address
    mode: str  # "service" or "host"
    port: int
    tls: bool


@dataclass
class ClusterPlan:
    hosts: list[Host]  # every swarm host in the inventory, managers first
    reachable: list[Host]  # those pyinfra is connected to (hosts outside --limit are read, never changed)
    addresses: dict[Host, str]  # resolved advertise addresses (IP form)
    hostnames: dict[Host, str]
    facts: dict[Host, dict[str, Any]]  # HOST_FACTS of each reachable host
    primary: Host | None  # a reachable manager already in the swarm: cluster-wide changes run there
    init_host: Host | None  # the manager that initialises the swarm, when no manager is in one yet
    in_limit: list[Host] = field(default_factory=list)  # the hosts this run may change (all without --limit)
    removed: list[Host] = field(default_factory=list)  # hosts with swarm_state: absent (taken out, then left alone)
    recover: Host | None = None  # quorum lost: the manager made a one-manager swarm this run (swarm_force_new_cluster)
    unlock_only: bool = False  # every manager reached is locked (autolock): this run unlocks them, nothing else
    data_path_port: int = 4789  # the VXLAN port the swarm uses (or will use, once initialised)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # the primary's node list
    steps: dict[Host, str] = field(default_factory=dict)  # membership step of each reachable host (step_for)
    registry: Registry | None = None
    planned: dict[Host, dict[str, Any]] = field(default_factory=dict)  # facts that depend on the plan
    run: dict[str, Any] = field(default_factory=dict)  # what steps and callbacks keep for the rest of the run
    lock: ClusterLock | None = None  # this run's cluster lock (none while there is no swarm, or no leader)

    def swarm_of(self, host: Host) -> dict[str, Any]:
        """The DockerSwarm fact of a reachable host ({} for others, and where Docker isn't installed)."""
        return (self.facts[host]["swarm"] if host in self.facts else None) or {}

    @property
    def managers(self) -> list[Host]:
        return [h for h in self.hosts if is_manager(h)]

    @property
    def registry_address(self) -> str:
        """HOST:PORT of the cluster's registry, "" without one."""
        return self.registry.address if self.registry else ""

    @property
    def acting_manager(self) -> Host | None:
        """The manager that runs cluster-wide changes (labels, roles, registry, stacks) this run; none while
        the swarm is brought back (`recovering`)."""
        return None if self.recovering else self.primary or self.init_host

    @property
    def recovering(self) -> bool:
        """Whether this run only brings the swarm back (quorum recovered, or every manager unlocked): joins,
        roles, removals and workloads wait for the next run."""
        return self.recover is not None or self.unlock_only

    def takes_part(self, host: Host) -> bool:
        """Whether the deploy's steps act on a host: not when it is being taken out (swarm_state: absent)."""
        return host not in self.removed

    def fact(self, name: str, target: Host | None = None) -> Any:
        """A fact of HOST_FACTS, or one that depends on the plan, of `target` (default: the host being deployed)."""
        target = target or current_host()
        if name in HOST_FACTS:
            return self.facts[target][name]
        return self.planned.get(target, {}).get(name)

    def node_of(self, host: Host) -> dict[str, Any] | None:
        """The swarm node entry of a host that is in this swarm: matched by its node ID, or by its advertise
        address while its Docker is down with this swarm's state on disk (step "restart") or locked ("unlock")."""
        by_id = next((n for n in self.nodes if n["id"] == self.swarm_of(host).get("NodeID")), None)
        if by_id is None and self.steps.get(host) in ("restart", "unlock"):
            return self.entry_by_address(host)
        return by_id

    def entry_by_address(self, host: Host) -> dict[str, Any] | None:
        """The node entry with a host's advertise address: how an unreachable host is found in the swarm."""
        address = self.addresses.get(host)
        return next((n for n in self.nodes if address and n["addr"] == address), None)

    def is_member(self, host: Host) -> bool:
        """Whether a host is a node of this swarm with nothing to do to join it: its engine restarts only in its
        node's turn (deploys/engine.py)."""
        return self.steps.get(host) == "member" and self.node_of(host) is not None

    def in_this_swarm(self, host: Host) -> bool:
        return self.swarm_of(host).get("LocalNodeState") == "active" and self.node_of(host) is not None

    def peers(self) -> list[str]:
        """The addresses the swarm ports are open to: every host of the inventory but those being removed."""
        return sorted({a for h, a in self.addresses.items() if h not in self.removed}, key=ipaddress.ip_address)


_PLANS: weakref.WeakKeyDictionary[State, ClusterPlan] = weakref.WeakKeyDictionary()
_PLAN_LOCK = BoundedSemaphore()


def current_host() -> Host:
    """The Host being deployed: `pyinfra.host` is a context proxy, which `is` never matches."""
    return ctx_host.get()


def plan_cluster(state: State | None = None, build: bool = True) -> ClusterPlan:
    """The plan of this run: made by the first host's deploy code (checking the inventory and all data
    first), the same object for every host after that. `build=False` (teardown) plans no `swarm init`.
    The cluster lock is taken before the plan is final (see lock.py): a run that waited for another one
    plans again, from what that one left."""
    state = state or ctx_state.get()
    with _PLAN_LOCK:  # every host's deploy code runs in its own greenlet: plan only once
        if state not in _PLANS:
            validate_inventory(state)
            plan = _build(state, build)
            hold = _take_lock(state, plan)
            if hold is not None and hold[1]:
                plan = _build(state, build)
            plan.lock = hold[0] if hold else None
            _check_pki(plan)
            _PLANS[state] = plan
        return _PLANS[state]


def _take_lock(state: State, plan: ClusterPlan) -> tuple[ClusterLock, bool] | None:
    """The cluster lock, through the swarm's managers (None: there is no swarm yet, or no leader to keep it)."""
    if plan.primary is None or plan.recover is not None:
        if plan.recover is not None:
            logger.warning("the swarm has no leader: this run takes no cluster lock")
        return None
    managers = [plan.primary, *(m for m in plan.managers if m is not plan.primary and plan.in_this_swarm(m))]
    return take_lock(state, managers, setting(plan.hosts[0], "swarm_lock_wait"))


def uses_pki(first: Host) -> bool:
    """Whether data puts anything of the controller's PKI directory into the swarm: the registry's CA,
    certificate and password, versioned secret and config names, the unlock key."""
    keys = ("registry_mode", "swarm_secrets", "swarm_configs", "swarm_autolock")
    return any(setting(first, key) for key in keys)


def _check_pki(plan: ClusterPlan) -> None:
    """Stop, before any change, a controller whose PKI directory is not the one the swarm was deployed with
    (it would replace the registry's CA and password, and rename every secret and config version): the
    swarm's record of it, and the registry CA the nodes trust, must match this directory's, unless
    `swarm_pki_takeover`. A swarm without a record gets this directory's."""
    first = plan.hosts[0]
    if not uses_pki(first):
        return
    takeover = setting(first, "swarm_pki_takeover")
    problems = []
    if plan.lock is not None:
        ours = pki.identity()
        recorded = [r.removeprefix(PKI_RECORD) for r in plan.lock.pki_records]
        if recorded and ours not in recorded:
            problems.append(f"the swarm was deployed with PKI directory {recorded[0]}, this one is "
                            f"{ours or 'new (no key yet)'}")  # fmt: skip
    if plan.registry is not None and plan.registry.tls:
        ca = pki.ca_digest()
        trusting = sorted(h.name for h in plan.reachable if _other_ca(plan, h, ca))
        if trusting:
            problems.append(f"{', '.join(trusting)} trust{'s' if len(trusting) == 1 else ''} another registry CA than "
                            f"this directory's{'' if ca else ' (it has none yet)'}")  # fmt: skip
    if problems and not takeover:
        raise DeployError(
            f"this controller's PKI directory ({pki.pki_dir()}) is not the one this swarm was deployed with: "
            + "; ".join(problems) + ". Going on would replace the registry's CA, certificate and password and "
            "rename every secret and config version. Copy the PKI directory of the controller that deployed it here "
            "(or point PYINFRA_SWARM_PKI_DIR at a copy), or set swarm_pki_takeover: true to make this one the swarm's"
        )  # fmt: skip
    if problems:
        logger.warning(f"swarm_pki_takeover: this controller's PKI directory ({pki.pki_dir()}) becomes the swarm's: "
                       + "; ".join(problems))  # fmt: skip
    if plan.lock is not None and (problems or not plan.lock.pki_records):
        pki.object_key()
        identity = pki.identity()
        assert identity is not None
        record_pki(plan.lock, identity)


def _other_ca(plan: ClusterPlan, target: Host, ca: str | None) -> bool:
    """Whether a host trusts a registry CA (its ca.crt for the registry) that is not `ca`."""
    assert plan.registry is not None
    held = plan.planned.get(target, {}).get("registry_ca", {}).get(ca_path(plan.registry.address))
    return held is not None and held != ca


def _gather(state: State, specs: dict[Host, Spec]) -> dict[Host, dict[str, Any]]:
    """One Bundle command per host, all hosts at once; a Bundle that printed nothing gives the defaults.
    What is gathered is also kept for `facts.read`."""
    specs = {target: spec for target, spec in specs.items() if spec}
    greenlets = {target: gevent.spawn(target.get_fact, Bundle, facts=spec) for target, spec in specs.items()}
    gevent.joinall(list(greenlets.values()), raise_error=True)
    values = {}
    for target, greenlet in greenlets.items():
        values[target] = greenlet.value or {name: cls.default() for name, (cls, _) in specs[target].items()}
        remember(state, target, specs[target], values[target])
    return values


def _connect_outside_limit(state: State, hosts: list[Host]) -> list[Host]:
    """Connect to the swarm hosts outside --limit, to read their state (nothing runs on them): without
    that, a run limited to a new manager would not see the swarm the others are in. Returns those reached."""
    outside = [h for h in hosts if not state.is_host_in_limit(h) and not h.connected]
    greenlets = [gevent.spawn(h.connect, show_errors=False) for h in outside]
    gevent.joinall(greenlets)
    return [h for h in outside if h.connected]


def _build(state: State, build: bool = True) -> ClusterPlan:
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
    facts = _gather(state, {h: MANAGER_FACTS if is_manager(h) else HOST_FACTS for h in reachable})
    info = {h: facts[h]["swarm"] or {} for h in reachable}
    addresses = {}
    for host in hosts:
        address = resolve_address(host, facts[host]["addresses"] if host in reachable else None)
        if address:
            addresses[host] = address
    hostnames = {h: facts[h]["hostname"] for h in reachable}
    _check_unique_hostnames(hostnames)
    _check_overlay_subnets(hosts[0], {h: facts[h]["addresses"] for h in reachable})
    _warn_clock_skew({h: facts[h]["clock"] for h in reachable}, controller_time)
    _warn_small_mtu(addresses, {h: (facts[h]["addresses"], facts[h]["mtus"]) for h in reachable})

    in_swarm = [
        h for h in reachable
        if is_manager(h) and info[h].get("LocalNodeState") == "active" and info[h].get("ControlAvailable")
    ]  # fmt: skip
    removed = [h for h in hosts if setting(h, "swarm_state") == "absent"]
    # Act through a manager that stays and that this run may change, if any.
    # A manager that reaches no leader right now (an election after a manager was lost) reports no cluster:
    # unknown, not another swarm; the node list below waits for the election. Managers that know it go first.
    in_swarm.sort(key=lambda h: (h in removed, h not in in_limit, not _cluster_id(info[h])))
    cluster_ids = {_cluster_id(info[h]) for h in in_swarm} - {""}
    if len(cluster_ids) > 1:
        names = ", ".join(f"{h.name} ({_cluster_id(info[h])})" for h in in_swarm if _cluster_id(info[h]))
        raise DeployError(
            f"the inventory's managers are in different swarms: {names}. Fix the inventory, or make the odd "
            "ones leave (docker swarm leave --force) before running the deploy"
        )
    primary = in_swarm[0] if in_swarm else None
    locked = [h for h in reachable if is_manager(h) and info[h].get("LocalNodeState") == "locked"]
    unlock_only = primary is None and bool(locked)
    if unlock_only:
        logger.warning(f"every manager reached is locked ({', '.join(h.name for h in locked)}): this run unlocks "
                       "them; the rest waits for the next run")  # fmt: skip
    init_host = None
    if primary is None and build and not unlock_only:
        init_host = _init_host([h for h in hosts if h not in removed], reachable, in_limit, info)
    first = primary or init_host or hosts[0]
    if primary is not None:
        _check_init_settings(primary, info[primary].get("Cluster") or {})
    nodes, recover = _node_list(in_swarm, facts, in_limit) if primary else ([], None)
    forced = [h.name for h in hosts if setting(h, "swarm_force_new_cluster")]
    if forced and nodes:
        logger.warning(f"swarm_force_new_cluster is set for {', '.join(forced)} but the swarm has a leader: nothing "
                       "to recover (remove the setting)")  # fmt: skip
    plan = ClusterPlan(
        hosts=hosts,
        reachable=reachable,
        addresses=addresses,
        hostnames=hostnames,
        facts=facts,
        primary=primary,
        init_host=init_host,
        in_limit=in_limit,
        removed=removed,
        recover=recover,
        unlock_only=unlock_only,
        data_path_port=int(((info[primary].get("Cluster") or {}) if primary else {}).get("DataPathPort") or 0)
        or setting(first, "swarm_data_path_port"),
        nodes=nodes,
    )
    if plan.acting_manager is not None:  # what `swarm.node` reads on the acting manager
        remember(state, plan.acting_manager, {"nodes": (SwarmNodes, {})}, {"nodes": plan.nodes})
    plan.steps = {host: step_for(plan, host) for host in reachable}
    _check_removals(plan)
    plan.registry = _registry(plan)
    if plan.registry is not None and plan.registry.host in removed:
        raise DeployError(f"registry_node {plan.registry.host.name} has swarm_state: absent: move the registry first")
    plan.planned = _gather(state, {h: _planned_facts(plan, h) for h in reachable})
    _check_users(plan)
    managers = len(plan.managers)
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
    return plan


def _check_users(plan: ClusterPlan) -> None:
    """`docker_users` names existing accounts: the deploy adds them to the docker group, it creates none (a
    misspelt name would be a new account with root's power over Docker)."""
    problems = []
    for host in plan.reachable:
        users = setting(host, "docker_users")
        missing = sorted(set(users) - set(plan.planned.get(host, {}).get("users", [])))
        if missing and plan.takes_part(host):
            problems.append(f"host {host.name}: docker_users {', '.join(missing)}: no such user on it")
    if problems:
        raise DeployError("; ".join(problems) + ": the deploy adds existing users to the docker group and creates none")


def _check_overlay_subnets(first: Host, addresses: dict[Host, dict[str, list[str]]]) -> None:
    """Refuse overlay address pools and network subnets that hold an address of a host's own interfaces:
    the overlay would hide that network from the containers (and from the node's own routing)."""
    subnets = {f"swarm_default_addr_pool {pool}": pool for pool in setting(first, "swarm_default_addr_pool")}
    for name, options in setting(first, "swarm_networks").items():
        if options.get("subnet"):
            subnets[f"swarm_networks[{name!r}] subnet {options['subnet']}"] = options["subnet"]
    problems = []
    for label, subnet in subnets.items():
        network = ipaddress.ip_network(subnet, strict=False)
        for host, interfaces in addresses.items():
            clash = [f"{ip} ({name})" for name, ips in interfaces.items() for ip in ips
                     if name != "lo" and ipaddress.ip_address(ip) in network]  # fmt: skip
            if clash:
                problems.append(f"{label} overlaps the networks of host {host.name}: {', '.join(clash)}")
    if problems:
        raise DeployError("; ".join(problems) + ": pick overlay subnets clear of the hosts' own networks")


def _check_removals(plan: ClusterPlan) -> None:
    """Refuse, before any change, a removal that would remove the last manager or break quorum; warn when
    the managers left tolerate no loss."""
    if not plan.removed or plan.primary is None or plan.recovering:
        return
    managers = [n for n in plan.nodes if n["role"] == "manager"]
    leaving = {n["id"] for h in plan.removed for n in [plan.node_of(h) or plan.entry_by_address(h)] if n}
    staying = [n for n in managers if n["id"] not in leaving]
    names = ", ".join(h.name for h in plan.removed)
    if not staying:
        raise DeployError(f"removing {names} would remove the swarm's last manager: add a manager first (or tear "
                          "the swarm down with teardown.py)")  # fmt: skip
    reachable = [n for n in staying if n["reachability"] == "reachable"]
    needed = len(staying) // 2 + 1
    if len(reachable) < needed:
        raise DeployError(
            f"removing {names} would leave {len(reachable)} reachable of {len(staying)} managers, {needed} needed "
            "for quorum: bring the unreachable managers back first"
        )
    if len(staying) < len(managers) and len(staying) - needed == 0:
        logger.warning(
            f"after removing {names}, {len(staying)} manager(s) remain: the swarm then tolerates no manager loss "
            "(use 3 managers)"
        )


def _registry(plan: ClusterPlan) -> Registry | None:
    """Where the registry runs (cluster-wide settings: the same on every host)."""
    first = plan.managers[0]
    mode = setting(first, "registry_mode")
    if mode is None:
        return None
    name = setting(first, "registry_node")
    target = first if name is None else next((h for h in plan.hosts if h.name == name), None)
    if target is None:
        raise DeployError(f"registry_node {name!r} is not a host of the inventory")
    if target not in plan.addresses:
        raise DeployError(f"registry_node {name}: its address is unknown (an interface name on an unreachable host)")
    port = setting(first, "registry_port")
    return Registry(target, f"{plan.addresses[target]}:{port}", mode, port, bool(setting(first, "registry_tls")))


def _planned_facts(plan: ClusterPlan, target: Host) -> Spec:
    """What the workload steps read, with arguments that depend on the plan (registry address, stack and
    image names); empty without workloads, so a swarm-only run costs no second command."""
    spec: Spec = {}
    registry = plan.registry
    if registry is not None:
        if registry.tls:
            spec["registry_ca"] = (FileHashes, {"paths": [ca_path(registry.address)]})
        if target is registry.host and setting(target, "registry_build"):
            spec["registry_image"] = (ImageContexts, {"images": [setting(target, "registry_image")], "pushed": False})
    users = setting(target, "docker_users")
    if users:
        spec["users"] = (ExistingUsers, {"users": sorted(users)})
    archives = archives_for(target, setting(target, "docker_image_archives"))
    if archives:
        spec["archive_images"] = (ImageContexts, {"images": [e["image"] for e in archives]})
    if target is not plan.acting_manager:
        return spec
    builds = setting(target, "docker_images")
    if builds:
        for reference in image_references(plan.registry_address, builds):  # one section each: what images.built reads
            spec[f"built_image:{reference}"] = (ImageContexts, {"images": [reference], "pushed": registry is not None})
    stacks = [stack["name"] for stack in setting(target, "swarm_stacks")]
    if registry is not None and registry.mode == "service":
        stacks.append("registry")
    for name in stacks:  # one section each: what `swarm.stack` reads
        spec[f"stack_file:{name}"] = (FileHashes, {"paths": [stack_path(name)]})
    if stacks:
        spec["stack_services"] = (StackServices, {})
    objects = ("swarm_networks", "swarm_secrets", "swarm_configs", "swarm_rotate")
    if registry is not None or stacks or any(setting(target, k) for k in objects):
        spec["swarm_stacks"] = (SwarmStacks, {})
        spec["swarm_objects"] = (SwarmObjects, {})
    if registry is not None:
        spec["registry_logins"] = (RegistryLogins, {})
    return spec


def _init_host(hosts: list[Host], reachable: list[Host], in_limit: list[Host], info: dict[Host, dict]) -> Host:
    """The manager that runs `swarm init`, when no reachable manager is in a swarm. Refused while a manager
    of the inventory could be in a swarm that this run can't see (unreachable, Docker stopped with swarm
    state on disk), unless `swarm_bootstrap` says to start a new swarm anyway: a second swarm beside
    a live one (split brain) is the worst thing a deploy can do."""
    managers = [h for h in hosts if is_manager(h)]
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


def _cluster_id(swarm_info: dict[str, Any]) -> str:
    return (swarm_info.get("Cluster") or {}).get("ID") or ""


def _node_list(
    managers: list[Host], facts: dict[Host, dict[str, Any]], in_limit: list[Host]
) -> tuple[list[dict[str, Any]], Host | None]:
    """The node list from the first of `managers` that gives one (gathered with their facts, else read
    again), and no manager to recover. Right after a manager is lost the others can't list nodes until they
    elect a leader (~10-20 s): wait for that rather than misjudge every host as being in another swarm. With
    no leader after that, quorum is lost: the manager with `swarm_force_new_cluster` is the one to recover
    (no node list), else the run stops with the procedure."""
    for manager in managers:
        if facts[manager].get("nodes"):
            return facts[manager]["nodes"], None
    deadline = time.monotonic() + LEADER_WAIT
    waiting = False
    while True:
        for manager in managers:
            nodes = manager.get_fact(SwarmNodes)
            if nodes:
                return nodes, None
        if time.monotonic() > deadline:
            break
        if not waiting:
            logger.warning(f"the swarm has no leader (a manager lost?): waiting up to {LEADER_WAIT:.0f} s for one")
            waiting = True
        gevent.sleep(3)
    survivor = next((m for m in managers if setting(m, "swarm_force_new_cluster")), None)
    if survivor is not None and survivor in in_limit:
        logger.warning(
            f"quorum is lost: {survivor.name} becomes a one-manager swarm (swarm_force_new_cluster); the swarm's "
            "other steps wait for the next run, which grows the managers back"
        )
        return [], survivor
    raise DeployError(
        f"no manager of the swarm can list its nodes after {LEADER_WAIT:.0f} s: the swarm has no leader "
        f"(managers reached: {', '.join(m.name for m in managers)}). Fewer than half the managers may be up: "
        "bring managers back, or recover: set swarm_force_new_cluster: true on one of the managers reached "
        "and run again (it becomes a one-manager swarm keeping services and secrets; the run after that grows "
        "the managers back)"
    )


def step_for(plan: ClusterPlan, host: Host) -> str:
    """What joining this swarm takes for a host: "member" (nothing), "restart" (nothing: its Docker is stopped
    with its swarm state on disk, and it is back in the swarm once the install step starts Docker), "init",
    "join", "rejoin" (leave the other swarm first, as swarm_force_rejoin allows), "unlock" (autolocked after
    a restart: unlocked with the key file, never made to leave), "pending" (a join under way or stuck) or
    "foreign" (in another swarm); hosts in the last two states are stopped with the reason. A host with swarm_state:
    absent is "remove" (in this swarm: taken out) or "gone" (nothing to do). While quorum is recovered, the
    surviving manager is "recover" (a new one-manager cluster) and every other host "recovering" (next run);
    the same while every manager reached is locked (they "unlock")."""
    if plan.recover is not None:
        return "recover" if host is plan.recover else "recovering"
    if plan.swarm_of(host).get("LocalNodeState") == "locked":
        return "unlock"  # autolocked after a restart: unlocked with the key file, never made to leave
    if plan.unlock_only:
        return "recovering"
    if host in plan.removed:
        return "remove" if plan.in_this_swarm(host) else "gone"
    if host is plan.init_host:
        return "init"
    if plan.in_this_swarm(host):
        return "member"
    info = plan.swarm_of(host)
    if info.get("LocalNodeState") == "unknown" and info.get("StateOnDisk") and plan.entry_by_address(host):
        return "restart"  # Docker stopped, this swarm's node on disk: it is back as that node once Docker starts
    local = info.get("LocalNodeState")
    if local in (None, "inactive", "unknown"):
        return "join"
    if local == "pending" and not setting(host, "swarm_force_rejoin"):
        return "pending"
    return "rejoin" if setting(host, "swarm_force_rejoin") else "foreign"


def resolve_address(host: Host, interfaces: dict[str, list[str]] | None) -> str | None:
    """The host's advertise address as an IP: as given, or the first IPv4 of the named interface.
    Checks that the address is on the host when the host's interfaces are known."""
    value = setting(host, "swarm_advertise_addr")
    all_addresses = {a for addrs in (interfaces or {}).values() for a in addrs}
    if value in all_addresses or (interfaces is None and is_ip(value)):
        return value
    if interfaces is None:
        return None  # an interface name on an unreachable host
    if is_ip(value):
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


def _check_unique_hostnames(hostnames: dict[Host, str]) -> None:
    seen: dict[str, str] = {}
    for host, hostname in hostnames.items():
        if hostname in seen:
            raise DeployError(
                f"hosts {seen[hostname]} and {host.name} have the same hostname {hostname!r}: swarm nodes are "
                "named by hostname, give each a unique one"
            )
        seen[hostname] = host.name
