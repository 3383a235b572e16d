"""What the plan reads from the hosts: every fact a step uses, in ONE command per host (all hosts at once),
plus one more for what depends on the plan (the registry's files, images, stacks, the ping of the manager a
host joins through) where there is any. Kept for `facts.read` (operations) and `ClusterPlan.fact` (deploys)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pool import Pool
from pyinfra.api import Host, State
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import Hostname

from pyinfra_swarm.facts import (
    Bundle,
    Clock,
    DockerDaemonConfig,
    DockerPackages,
    DockerSwarm,
    EngineState,
    ExistingUsers,
    FileHashes,
    FirewalldZone,
    FirewallTools,
    HostAddresses,
    ImageContexts,
    InterfaceMtus,
    KernelFeatures,
    OverlayNetworks,
    Pingable,
    RegistryLogins,
    ServiceStates,
    Spec,
    SshdPorts,
    StackServices,
    SwarmNodes,
    SwarmObjects,
    SwarmStacks,
    UfwState,
    remember,
)
from pyinfra_swarm.layout import DOCKER_APT_KEY, DOCKER_APT_SOURCE, PACKAGES, ca_path, stack_path
from pyinfra_swarm.operations.firewall import FILES as FIREWALL_FILES
from pyinfra_swarm.operations.firewall import FIREWALLD_NAMES, FIREWALLD_ZONE
from pyinfra_swarm.operations.firewall import UNIT as FIREWALL_UNIT
from pyinfra_swarm.settings import is_ip, is_manager, setting

if TYPE_CHECKING:
    from pyinfra_swarm.plan.model import ClusterPlan

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
    "firewall_files": (FileHashes, {"paths": FIREWALL_FILES}),
    "sshd_ports": (SshdPorts, {}),
    "packages": (DockerPackages, {"packages": PACKAGES}),
    "apt_source": (FileHashes, {"paths": [DOCKER_APT_SOURCE, DOCKER_APT_KEY]}),
    "services": (ServiceStates, {"services": ["docker.service"]}),
    "firewall_service": (ServiceStates, {"services": [FIREWALL_UNIT]}),
    "engine": (EngineState, {}),
}
# What a host's firewall front-end says, in the same command where data may use it (each runs only where
# its tool is installed).
FIREWALL_FACTS: dict[str, Spec] = {
    "ufw": {"ufw": (UfwState, {})},
    "firewalld": {"firewalld_zone": (FirewalldZone, {"zone": FIREWALLD_ZONE, "ipsets": FIREWALLD_NAMES})},
}
# The manager expected to act for the cluster also lists the swarm's nodes and overlay networks in the same
# command (nothing when it isn't in one); only its lists are used.
MANAGER_FACTS: Spec = {"nodes": (SwarmNodes, {}), "networks": (OverlayNetworks, {})}
# The facts that depend on the plan (`planned_facts`); NAME:... ones come one per image or stack.
PLANNED = ("registry_ca", "registry_image", "users", "archive_images", "built_image", "stack_file", "stack_services",
           "swarm_stacks", "swarm_objects", "registry_logins", "ping_acting")  # fmt: skip


def is_fact_name(name: str) -> bool:
    """Whether the plan gathers a fact of this name (for some host)."""
    known = {*HOST_FACTS, *MANAGER_FACTS, *(n for spec in FIREWALL_FACTS.values() for n in spec), *PLANNED}
    return name.split(":", 1)[0] in known


def firewall_facts(firewall: str | bool) -> Spec:
    """The firewall front-ends' facts that a `swarm_firewall` setting may use."""
    return {name: fact for tool, spec in FIREWALL_FACTS.items() if firewall in (tool, "auto")
            for name, fact in spec.items()}  # fmt: skip


def host_spec(host: Host, lists_nodes: bool = False) -> Spec:
    """What the first command reads from a host (with the node list on the manager expected to act)."""
    return {**HOST_FACTS, **firewall_facts(setting(host, "swarm_firewall")),
            **(MANAGER_FACTS if lists_nodes else {})}  # fmt: skip


def expected_acting(hosts: list[Host], reachable: list[Host], in_limit: list[Host]) -> Host | None:
    """The manager most likely to act for the cluster, before anything is read: the first reachable manager
    this run may change that stays in the swarm (managers.choose_primary decides; when it picks another, the
    node list is read there)."""
    return next((h for h in hosts if is_manager(h) and h in reachable and h in in_limit
                 and setting(h, "swarm_state") != "absent"), None)  # fmt: skip


def image_references(registry: str, entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """REGISTRY/NAME:TAG (NAME:TAG without a registry) -> its docker_images entry."""
    return {f"{registry + '/' if registry else ''}{e['name']}:{e['tag']}": e for e in entries}


def archives_for(target: Host, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The docker_image_archives entries meant for a host (its group, or all)."""
    return [e for e in entries if e.get("group", "all") == "all" or e.get("group") in target.groups]


def gather(state: State, specs: dict[Host, Spec]) -> dict[Host, dict[str, Any]]:
    """One Bundle command per host, as many hosts at once as --parallel allows (pyinfra's default: 20 per
    CPU, at most the number of hosts); a Bundle that printed nothing gives the defaults. What is gathered is
    also kept for `facts.read`."""
    specs = {target: spec for target, spec in specs.items() if spec}
    pool = Pool(state.config.PARALLEL or None)
    greenlets = {target: pool.spawn(target.get_fact, Bundle, facts=spec) for target, spec in specs.items()}
    gevent.joinall(list(greenlets.values()), raise_error=True)
    values = {}
    for target, greenlet in greenlets.items():
        values[target] = greenlet.value or {name: cls.default() for name, (cls, _) in specs[target].items()}
        remember(state, target, specs[target], values[target])
    return values


def read_outside_limit(host: Host) -> bool:
    """Whether a host outside --limit is read: a manager (without them, a run limited to a new manager would
    not see the swarm the others are in), a host to take out (never mistaken for an unreachable one, whose
    entry is removed by force), or one whose advertise address is an interface name (the peers' firewall
    rules need it). A worker that stays, its address an IP, is not: the run costs what its limit does."""
    return (is_manager(host) or setting(host, "swarm_state") == "absent"
            or not is_ip(setting(host, "swarm_advertise_addr")))  # fmt: skip


def connect_outside_limit(state: State, hosts: list[Host]) -> list[Host]:
    """Connect to these hosts outside --limit, to read their state (nothing runs on them), as many at once as
    --parallel allows. Returns those reached."""
    outside = [h for h in hosts if not state.is_host_in_limit(h) and not h.connected]
    pool = Pool(state.config.PARALLEL or None)
    greenlets = [pool.spawn(h.connect, show_errors=False) for h in outside]
    gevent.joinall(greenlets)
    return [h for h in outside if h.connected]


def planned_facts(plan: ClusterPlan, target: Host) -> Spec:
    """What the workload steps read, with arguments that depend on the plan (registry address, stack and
    image names); empty without workloads, so a swarm-only run costs no second command."""
    spec: Spec = {}
    registry = plan.registry
    if registry is not None:
        if registry.tls:
            spec["registry_ca"] = (FileHashes, {"paths": [ca_path(registry.address)]})
        if target is registry.host and setting(target, "registry_build"):
            spec["registry_image"] = (ImageContexts, {"images": [setting(target, "registry_image")], "pushed": False})
    acting = plan.acting_manager
    step = plan.steps.get(target)
    if acting is not None and step is not None and step.joins:  # a hint for preflight (ICMP may be blocked)
        spec["ping_acting"] = (Pingable, {"address": plan.addresses[acting]})
    users = setting(target, "docker_users")
    if users:
        spec["users"] = (ExistingUsers, {"users": sorted(users)})
    archives = archives_for(target, setting(target, "docker_image_archives"))
    if archives:
        spec["archive_images"] = (ImageContexts, {"images": [e["image"] for e in archives]})
    if target is not acting:
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
