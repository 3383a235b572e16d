"""What joining this swarm takes for each host: its membership step, chosen once per run by `step_for`."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from pyinfra.api import Host

from pyinfra_swarm.settings import setting

if TYPE_CHECKING:
    from pyinfra_swarm.plan.model import ClusterPlan


class Step(str, Enum):
    """A host's membership step this run."""

    MEMBER = "member"  # in this swarm: nothing to do
    RESTART = "restart"  # Docker stopped with this swarm's node on disk: back once the install step starts Docker
    INIT = "init"  # the manager that starts the swarm
    JOIN = "join"
    REJOIN = "rejoin"  # in another swarm: leaves it first (swarm_force_rejoin)
    UNLOCK = "unlock"  # autolocked after a restart: unlocked with the key file, never made to leave
    PENDING = "pending"  # a join under way or stuck: stopped with the reason
    FOREIGN = "foreign"  # in another swarm: stopped with the reason
    REMOVE = "remove"  # swarm_state: absent and in this swarm: taken out
    GONE = "gone"  # swarm_state: absent, and out already
    RECOVER = "recover"  # quorum lost: the manager that becomes a one-manager swarm (swarm_force_new_cluster)
    RECOVERING = "recovering"  # the swarm is brought back this run: the rest waits for the next

    @property
    def stopped(self) -> bool:
        """The host is stopped with the reason (the deploy can't tell which swarm it should be in)."""
        return self in (Step.PENDING, Step.FOREIGN)

    @property
    def joins(self) -> bool:
        """The host joins this swarm this run."""
        return self in (Step.JOIN, Step.REJOIN)

    @property
    def found_by_address(self) -> bool:
        """A node of this swarm whose Docker can't say its node ID now (stopped, or locked): its node entry is
        the one with its advertise address."""
        return self in (Step.RESTART, Step.UNLOCK)


def step_for(plan: ClusterPlan, host: Host) -> Step:
    """The membership step of a reachable host. While quorum is recovered, the surviving manager recovers and
    every other host waits; the same while every manager reached is locked (they unlock)."""
    local = plan.swarm_of(host)
    if plan.recover is not None:
        return Step.RECOVER if host is plan.recover else Step.RECOVERING
    if local.locked:
        return Step.UNLOCK
    if plan.unlock_only:
        return Step.RECOVERING
    if host in plan.removed:
        return Step.REMOVE if plan.in_this_swarm(host) else Step.GONE
    if host is plan.init_host:
        return Step.INIT
    if plan.in_this_swarm(host):
        return Step.MEMBER
    if local.state == "unknown" and local.on_disk and plan.entry_by_address(host):
        return Step.RESTART
    if local.free:
        return Step.JOIN
    if setting(host, "swarm_force_rejoin"):
        return Step.REJOIN
    return Step.PENDING if local.state == "pending" else Step.FOREIGN
