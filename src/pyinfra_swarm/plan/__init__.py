"""The plan of the cluster, made once per run by `plan_cluster()` from what every reachable host says, and
handed to every step: who is in which swarm, who inits and who joins through whom, which manager acts for
the cluster, every node's address, where the registry runs. It is made in phases, each a module of its own:
observe (every host read in one command, observe.py), check (checks.py), choose who acts (managers.py), then
assemble the plan (model.py) and each host's membership step (membership.py)."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

from gevent.lock import BoundedSemaphore
from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.api.exceptions import DeployError
from pyinfra.context import ctx_state

from pyinfra_swarm.facts import LocalSwarm, Spec, SwarmNodes, remember
from pyinfra_swarm.plan import checks, managers
from pyinfra_swarm.plan.membership import Step, step_for
from pyinfra_swarm.plan.model import ClusterPlan, Registry, RunStore, current_host
from pyinfra_swarm.plan.observe import (
    archives_for,
    connect_outside_limit,
    expected_acting,
    gather,
    host_spec,
    image_references,
    planned_facts,
    read_outside_limit,
    resolve_address,
)
from pyinfra_swarm.settings import setting, swarm_hosts, validate_inventory

__all__ = ["ClusterPlan", "Registry", "RunStore", "Step", "archives_for", "current_host", "image_references",
           "plan_cluster"]  # fmt: skip

_PLANS: weakref.WeakKeyDictionary[State, ClusterPlan] = weakref.WeakKeyDictionary()
_PLAN_LOCK = BoundedSemaphore()


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
            hold = managers.cluster_lock(state, plan)
            if hold is not None and hold[1]:
                plan = _build(state, build)
            plan.lock = hold[0] if hold else None
            checks.check_pki(plan)
            _PLANS[state] = plan
        return _PLANS[state]


@dataclass
class Observation:
    """What the hosts said, before anything is decided."""

    hosts: list[Host]
    in_limit: list[Host]
    reachable: list[Host]
    specs: dict[Host, Spec]
    facts: dict[Host, dict[str, Any]]
    swarms: dict[Host, LocalSwarm]
    addresses: dict[Host, str]
    hostnames: dict[Host, str]


def observe(state: State) -> Observation:
    """Read the swarm hosts in one command each: all of them, or with --limit those in it and, outside it
    (never changed), what keeps the run safe (`read_outside_limit`); resolve the advertise addresses."""
    hosts = swarm_hosts(state)
    in_limit = [h for h in hosts if state.is_host_in_limit(h)]
    skipped = [h for h in hosts if h not in in_limit and not read_outside_limit(h)]
    read_only = connect_outside_limit(state, [h for h in hosts if h not in in_limit and h not in skipped])
    reachable = [h for h in hosts if h in state.active_hosts or h in read_only]
    for host in [h for h in hosts if h not in skipped]:
        if host not in reachable:
            logger.warning(f"{host.name} is unreachable: left as it is this run")
        elif host not in in_limit:
            logger.info(f"{host.name} is outside --limit: read, not changed")
    if skipped:
        logger.info(f"--limit: {len(skipped)} workers outside it not read (their addresses are in the inventory; "
                    "managers and hosts to take out are read)")  # fmt: skip
    lister = expected_acting(hosts, reachable, in_limit)
    specs = {h: host_spec(h, lists_nodes=h is lister) for h in reachable}
    facts = gather(state, specs)
    addresses = {}
    for host in hosts:
        address = resolve_address(host, facts[host]["addresses"] if host in reachable else None)
        if address:
            addresses[host] = address
    return Observation(hosts=hosts, in_limit=in_limit, reachable=reachable, specs=specs, facts=facts,
                       swarms={h: LocalSwarm.of(facts[h]["swarm"]) for h in reachable}, addresses=addresses,
                       hostnames={h: facts[h]["hostname"] for h in reachable})  # fmt: skip


def check(seen: Observation, controller_time: float) -> None:
    """What is wrong or risky in what the hosts said, whoever acts."""
    checks.check_unique_hostnames(seen.hostnames)
    checks.check_overlay_subnets(seen.hosts[0], {h: seen.facts[h]["addresses"] for h in seen.reachable})
    checks.warn_clock_skew({h: seen.facts[h]["clock"] for h in seen.reachable}, controller_time)
    checks.warn_small_mtu(seen.addresses, {h: (seen.facts[h]["addresses"], seen.facts[h]["mtus"])
                                           for h in seen.reachable})  # fmt: skip


def _build(state: State, build: bool = True) -> ClusterPlan:
    """Observe, check, choose who acts, assemble."""
    controller_time = time.time()
    seen = observe(state)
    check(seen, controller_time)
    hosts, swarms = seen.hosts, seen.swarms
    removed = [h for h in hosts if setting(h, "swarm_state") == "absent"]
    primary, in_swarm, unlock_only = managers.choose_primary(seen.reachable, seen.in_limit, removed, swarms)
    init_host = None
    if primary is None and build and not unlock_only:
        init_host = managers.choose_init_host([h for h in hosts if h not in removed], seen.reachable, seen.in_limit,
                                              swarms)  # fmt: skip
    first = primary or init_host or hosts[0]
    cluster = swarms[primary].cluster if primary is not None else {}
    if primary is not None:
        checks.check_init_settings(primary, cluster)
    nodes, recover = managers.node_list(in_swarm, seen.facts, seen.in_limit) if primary else ([], None)
    forced = [h.name for h in hosts if setting(h, "swarm_force_new_cluster")]
    if forced and nodes:
        logger.warning(f"swarm_force_new_cluster is set for {', '.join(forced)} but the swarm has a leader: nothing "
                       "to recover (remove the setting)")  # fmt: skip
    plan = ClusterPlan(
        hosts=hosts,
        reachable=seen.reachable,
        addresses=seen.addresses,
        hostnames=seen.hostnames,
        swarms=swarms,
        specs=seen.specs,
        primary=primary,
        init_host=init_host,
        in_limit=seen.in_limit,
        removed=removed,
        recover=recover,
        unlock_only=unlock_only,
        data_path_port=int(cluster.get("DataPathPort") or 0) or setting(first, "swarm_data_path_port"),
        nodes=nodes,
        networks=next((seen.facts[m].get("networks") or [] for m in in_swarm if seen.facts[m].get("nodes")), []),
    )
    if plan.acting_manager is not None:  # what `swarm.node` reads on the acting manager: the list used
        remember(state, plan.acting_manager, {"nodes": (SwarmNodes, {})}, {"nodes": plan.nodes})
    plan.steps = {host: step_for(plan, host) for host in seen.reachable}
    checks.check_removals(plan)
    checks.check_encrypted_overlay_engines(plan)
    plan.registry = managers.choose_registry(plan)
    if plan.registry is not None and plan.registry.host in removed:
        raise DeployError(f"registry_node {plan.registry.host.name} has swarm_state: absent: move the registry first")
    planned = {h: planned_facts(plan, h) for h in seen.reachable}
    gather(state, planned)
    for host, spec in planned.items():
        plan.specs[host] = {**plan.specs[host], **spec}
    checks.check_users(plan)
    _warn_about_shape(plan)
    return plan


def _warn_about_shape(plan: ClusterPlan) -> None:
    count = len(plan.managers)
    if count % 2 == 0:
        logger.warning(
            f"{count} managers: an even number tolerates no more manager failures than {count - 1}; "
            "use an odd number (3 or 5)"
        )
    if plan.primary is not None and plan.primary not in plan.in_limit:
        logger.warning(
            f"cluster-wide steps (node roles and labels, registry, stacks) run on {plan.primary.name}, which is "
            "outside --limit: skipped this run"
        )
