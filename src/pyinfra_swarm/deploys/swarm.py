"""Swarm membership: init the first manager, join the others with tokens read at execution time from a live
manager (on stdin, never on a command line), and keep node roles, labels and availability as the inventory
and data say."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import Host
from pyinfra.operations import server

from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.layout import ENGINE_PACKAGES
from pyinfra_swarm.operations import credentials, maintenance, swarm
from pyinfra_swarm.operations.swarm import RESTORE_LABEL
from pyinfra_swarm.plan import ClusterPlan, Step
from pyinfra_swarm.settings import is_manager, setting, unlock_key_file

STOPPED = {
    Step.FOREIGN: "is in a different swarm (node {node}, managers {managers}): stopped here. Set swarm_force_rejoin: "
    "true for it to leave that swarm and join this one",
    Step.PENDING: "is still joining a swarm (state pending, managers {managers}): stopped here. Wait for the join to "
    "finish or fail, or set swarm_force_rejoin: true for it to give up and join again",
}


@step("Join the swarm")
def join_swarm(plan: ClusterPlan, this: Host) -> None:
    """Init the swarm where the plan says, or join this host to it with the role the inventory gives. A
    host already in this swarm (same cluster, by node ID) is left alone; a locked manager is unlocked from
    the key file; one in another swarm or pending is stopped with the reason, unless `swarm_force_rejoin`
    lets it leave first. While the swarm is brought back (quorum, locks), only that happens."""
    membership = plan.steps[this]
    address = plan.addresses[this]
    data_path_addr = setting(this, "swarm_data_path_addr")
    swarm.barrier(name="Every host's firewall is in place")
    if membership is Step.MEMBER:
        host.noop("already in this swarm")
    elif membership is Step.RESTART:
        host.noop("Docker was stopped with this swarm's state on disk: the node is back once Docker starts")
    elif membership is Step.RECOVER:
        swarm.force_new_cluster(name="Recover the swarm: a one-manager swarm here", advertise_addr=address)
    elif membership is Step.UNLOCK:
        credentials.unlock(name="Unlock this manager (autolock)", key_file=unlock_key_file(this))
    elif membership is Step.RECOVERING:
        host.noop("the swarm is brought back this run (quorum recovered or managers unlocked): joins, roles and "
                  "workloads wait for the next run")  # fmt: skip
    elif membership is Step.INIT:
        swarm.init(
            name="Initialise the swarm",
            advertise_addr=address,
            default_addr_pool=setting(this, "swarm_default_addr_pool"),
            default_addr_pool_mask_length=setting(this, "swarm_default_addr_pool_mask_length"),
            data_path_port=setting(this, "swarm_data_path_port"),
            availability=setting(this, "swarm_availability"),
            data_path_addr=data_path_addr,
        )
    elif membership.stopped:
        local = plan.swarm_of(this)
        managers = ", ".join(local.managers) or "unknown"
        logger.error(f"{host.print_prefix}{STOPPED[membership].format(node=local.node_id, managers=managers)}")
        host.state.fail_hosts({this})
    else:
        if membership is Step.REJOIN:
            swarm.leave(name="Leave the other swarm (swarm_force_rejoin)")
        role = "manager" if is_manager(this) else "worker"
        # Through the acting manager (which may initialise the swarm in this run), or another in the swarm.
        acting = [plan.acting_manager] if plan.acting_manager is not None else []
        through = [*acting, *(m for m in plan.managers if plan.in_this_swarm(m))]
        swarm.join(name=f"Join the swarm as a {role}", role=role, advertise_addr=address,
                   managers={m.name: plan.addresses[m] for m in through},
                   data_path_addr=data_path_addr, after_leave=membership is Step.REJOIN)  # fmt: skip


@step("Swarm node roles, labels and availability", runs_on="acting manager")
def configure_nodes(plan: ClusterPlan, this: Host) -> None:
    """On the manager acting for the cluster: remove the stale entries of hosts that rejoin, then bring
    every node this run may change to its role, labels and availability."""
    targets = [t for t in plan.reachable if not plan.steps[t].stopped and t in plan.in_limit and plan.takes_part(t)]
    # A host not in this swarm now (not stopped, locked or restarting): an entry with its hostname is its past self.
    rejoining = [t for t in targets if plan.node_of(t) is None and not plan.steps[t].found_by_address]
    stale = [n["id"] for t in rejoining for n in plan.nodes if n["hostname"] == plan.hostnames[t]]
    wanted = []
    for target in targets:
        entry = plan.node_of(target)
        wanted.append({
            "node": entry["id"] if entry else plan.hostnames[target],
            "role": "manager" if is_manager(target) else "worker",
            "labels": setting(target, "swarm_labels"),
            "availability": setting(target, "swarm_availability"),
            "joining": entry is None,
        })  # fmt: skip
    if wanted or stale:
        swarm.nodes(name="Node roles, labels and availability (stale entries of rejoining hosts removed)"
                    if stale else "Node roles, labels and availability", wanted=wanted, remove=stale)  # fmt: skip


@step("Take hosts out of the swarm", runs_on="every host")
def remove_nodes(plan: ClusterPlan, this: Host) -> None:
    """Hosts with `swarm_state: absent`, one at a time: drained, their tasks moved, demoted first if managers,
    made to leave, their node entries removed, services back at their replicas (the plan has refused a
    removal that breaks quorum or removes the last manager); `docker_purge` also uninstalls Docker and its
    data. An unreachable one has its entry removed from the acting manager (forced), with a warning."""
    if plan.recovering:  # the swarm is brought back this run; removals wait for the next
        return
    if this in plan.removed:
        installed = [p for p in plan.fact("packages")["packages"] if p in ENGINE_PACKAGES]
        purge = installed if setting(this, "docker_purge") else None
        entry = plan.node_of(this)
        if plan.steps.get(this) is Step.REMOVE and entry is not None:
            staying = [m.name for m in plan.managers if plan.takes_part(m) and plan.in_this_swarm(m)]
            maintenance.removed(name="Take this host out of the swarm", node_id=entry["id"], managers=staying,
                                demote=entry["role"] == "manager", purge=purge,
                                package_manager=plan.fact("packages")["manager"] or "apt",
                                drain_timeout=setting(this, "swarm_drain_timeout"),
                                availability=entry["labels"].get(RESTORE_LABEL) or entry["availability"],
                                _serial=True)  # fmt: skip
        elif purge:
            server.shell(
                name="Uninstall Docker and delete its data",
                commands=maintenance.purge_commands(purge, plan.fact("packages")["manager"] or "apt"),
            )
        else:
            host.noop("not in the swarm (swarm_state: absent)")
        return
    if this is not plan.acting_manager:
        return
    for target in host.loop([h for h in plan.removed if h not in plan.reachable]):
        entry = plan.entry_by_address(target)
        if entry is None:
            continue
        logger.warning(f"{target.name} (swarm_state: absent) is unreachable: its node entry is removed by force; "
                       "Docker on it is left as it is")  # fmt: skip
        swarm.node(name=f"Remove the entry of {target.name} (unreachable)", node=entry["id"], present=False)
