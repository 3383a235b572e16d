"""The plan as a value: `ClusterPlan`, what every step reads, and `RunStore`, what steps keep for the rest of
the run."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import Host
from pyinfra.context import ctx_host

from pyinfra_swarm.facts import LocalSwarm, Spec, recall
from pyinfra_swarm.lock import ClusterLock
from pyinfra_swarm.plan.membership import Step
from pyinfra_swarm.plan.observe import is_fact_name
from pyinfra_swarm.settings import is_manager


def current_host() -> Host:
    """The Host being deployed: `pyinfra.host` is a context proxy, which `is` never matches."""
    return ctx_host.get()


@dataclass
class Registry:
    """Where the cluster's registry runs and how it is reached."""

    host: Host
    address: str  # HOST:PORT, the registry's node's advertise address
    mode: str  # "service" or "host"
    port: int
    tls: bool


@dataclass
class RunStore:
    """What the deploy steps make once and share between hosts for the rest of the run (deploy code runs once
    per host, each with fresh globals)."""

    built_images: set[str] = field(default_factory=set)  # images this run builds: their stacks deploy again
    registry_material: tuple[str, str, str, str] | None = None  # CA, certificate, key, htpasswd


@dataclass
class ClusterPlan:
    hosts: list[Host]  # every swarm host in the inventory, managers first
    reachable: list[Host]  # those pyinfra is connected to (hosts outside --limit are read, never changed)
    addresses: dict[Host, str]  # resolved advertise addresses (IP form)
    hostnames: dict[Host, str]
    swarms: dict[Host, LocalSwarm]  # each reachable host's own membership
    specs: dict[Host, Spec]  # the facts gathered from each reachable host, by name (values: facts.recall)
    primary: Host | None  # a reachable manager already in the swarm: cluster-wide changes run there
    init_host: Host | None  # the manager that initialises the swarm, when no manager is in one yet
    in_limit: list[Host] = field(default_factory=list)  # the hosts this run may change (all without --limit)
    removed: list[Host] = field(default_factory=list)  # hosts with swarm_state: absent (taken out, then left alone)
    recover: Host | None = None  # quorum lost: the manager made a one-manager swarm this run (swarm_force_new_cluster)
    unlock_only: bool = False  # every manager reached is locked (autolock): this run unlocks them, nothing else
    data_path_port: int = 4789  # the VXLAN port the swarm uses (or will use, once initialised)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # the primary's node list
    networks: list[dict[str, Any]] = field(default_factory=list)  # the primary's overlay networks (name, encrypted)
    steps: dict[Host, Step] = field(default_factory=dict)  # membership step of each reachable host (step_for)
    registry: Registry | None = None
    run: RunStore = field(default_factory=RunStore)
    lock: ClusterLock | None = None  # this run's cluster lock (none while there is no swarm, or no leader)
    _peers: list[str] | None = field(default=None, repr=False)

    def swarm_of(self, host: Host) -> LocalSwarm:
        """A reachable host's own membership (empty for others, and where Docker isn't installed)."""
        return self.swarms.get(host) or LocalSwarm()

    def fact(self, name: str, target: Host | None = None) -> Any:
        """A fact the plan gathered, by its name in the bundle (observe.HOST_FACTS, or one that depends on the
        plan), of `target` (default: the host being deployed). A plan-dependent fact not gathered for that host
        is None; a name the plan never gathers is an error."""
        if not is_fact_name(name):
            raise KeyError(f"the plan gathers no fact named {name!r}")
        target = target or current_host()
        spec = self.specs.get(target, {})
        if name not in spec:
            return None
        cls, kwargs = spec[name]
        return recall(target, cls, kwargs)

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

    def acts_for_cluster(self, host: Host) -> bool:
        """Whether `host` is the manager that makes this run's cluster-wide changes."""
        return host is self.acting_manager

    def node_of(self, host: Host) -> dict[str, Any] | None:
        """The swarm node entry of a host that is in this swarm: matched by its node ID, or by its advertise
        address while its Docker can't say its node ID (Step.found_by_address)."""
        node_id = self.swarm_of(host).node_id
        by_id = next((n for n in self.nodes if node_id and n["id"] == node_id), None)
        step = self.steps.get(host)
        if by_id is None and step is not None and step.found_by_address:
            return self.entry_by_address(host)
        return by_id

    def entry_by_address(self, host: Host) -> dict[str, Any] | None:
        """The node entry with a host's advertise address: how an unreachable host is found in the swarm."""
        address = self.addresses.get(host)
        return next((n for n in self.nodes if address and n["addr"] == address), None)

    def is_member(self, host: Host) -> bool:
        """Whether a host is a node of this swarm with nothing to do to join it: its engine restarts only in its
        node's turn (deploys/engine.py)."""
        return self.steps.get(host) is Step.MEMBER and self.node_of(host) is not None

    def in_this_swarm(self, host: Host) -> bool:
        return self.swarm_of(host).active and self.node_of(host) is not None

    def peers(self) -> list[str]:
        """The addresses the swarm ports are open to: every host of the inventory but those being removed
        (worked out once: every host's firewall asks)."""
        if self._peers is None:
            kept = {a for h, a in self.addresses.items() if h not in self.removed}
            self._peers = sorted(kept, key=ipaddress.ip_address)
        return list(self._peers)
