"""Who acts this run: the manager that acts for the cluster (or the one that starts the swarm), the node list
it gives, whether quorum must be recovered, the cluster lock, and where the registry runs."""

from __future__ import annotations

import time
from typing import Any

import gevent
from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.api.exceptions import DeployError

from pyinfra_swarm.facts import LocalSwarm, SwarmNodes
from pyinfra_swarm.lock import ClusterLock
from pyinfra_swarm.lock import take as take_lock
from pyinfra_swarm.plan.model import ClusterPlan, Registry
from pyinfra_swarm.settings import is_manager, setting

LEADER_WAIT = 45.0  # seconds to wait for a leader election before giving up


def cluster_lock(state: State, plan: ClusterPlan) -> tuple[ClusterLock, bool] | None:
    """The cluster lock, through the swarm's managers (None: there is no swarm yet, or no leader to keep it)."""
    if plan.primary is None or plan.recover is not None:
        if plan.recover is not None:
            logger.warning("the swarm has no leader: this run takes no cluster lock")
        return None
    managers = [plan.primary, *(m for m in plan.managers if m is not plan.primary and plan.in_this_swarm(m))]
    return take_lock(state, managers, setting(plan.hosts[0], "swarm_lock_wait"))


def choose_registry(plan: ClusterPlan) -> Registry | None:
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


def choose_init_host(
    hosts: list[Host], reachable: list[Host], in_limit: list[Host], swarms: dict[Host, LocalSwarm]
) -> Host:
    """The manager that runs `swarm init`, when no reachable manager is in a swarm. Refused while a manager
    of the inventory could be in a swarm that this run can't see (unreachable, Docker stopped with swarm
    state on disk), unless `swarm_bootstrap` says to start a new swarm anyway: a second swarm beside
    a live one (split brain) is the worst thing a deploy can do."""
    managers = [h for h in hosts if is_manager(h)]
    # Not in a swarm: no Docker yet, Docker stopped (the install step starts it), inactive.
    candidates = [h for h in managers if h in reachable and swarms[h].free]
    unseen = [h for h in managers if h not in reachable]
    stopped = [h for h in candidates if swarms[h].on_disk]
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


def node_list(
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


def choose_primary(
    reachable: list[Host], in_limit: list[Host], removed: list[Host], swarms: dict[Host, LocalSwarm]
) -> tuple[Host | None, list[Host], bool]:
    """(the manager that acts for the swarm, every reachable manager in it, whether every manager reached is
    locked). It is a manager that stays and that this run may change, if any; a manager that reaches no leader
    right now (an election after a manager was lost) reports no cluster: unknown, not another swarm (the node
    list waits for the election), so managers that know it go first. Managers in different swarms stop the run."""
    in_swarm = [h for h in reachable if is_manager(h) and swarms[h].active and swarms[h].control]
    in_swarm.sort(key=lambda h: (h in removed, h not in in_limit, not swarms[h].cluster_id))
    cluster_ids = {swarms[h].cluster_id for h in in_swarm} - {""}
    if len(cluster_ids) > 1:
        names = ", ".join(f"{h.name} ({swarms[h].cluster_id})" for h in in_swarm if swarms[h].cluster_id)
        raise DeployError(
            f"the inventory's managers are in different swarms: {names}. Fix the inventory, or make the odd "
            "ones leave (docker swarm leave --force) before running the deploy"
        )
    primary = in_swarm[0] if in_swarm else None
    locked = [h for h in reachable if is_manager(h) and swarms[h].locked]
    unlock_only = primary is None and bool(locked)
    if unlock_only:
        logger.warning(f"every manager reached is locked ({', '.join(h.name for h in locked)}): this run unlocks "
                       "them; the rest waits for the next run")  # fmt: skip
    return primary, in_swarm, unlock_only
