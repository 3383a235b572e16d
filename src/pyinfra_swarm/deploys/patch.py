"""Rolling OS patching (`patch.py`): each node of the swarm upgrades its packages in its turn, drained, and
reboots when it asks for one (see operations/patching.py); managers first, one at a time and only while the
others keep quorum, then workers. What each node would upgrade is read from it first (facts.PendingPatches):
a node with nothing to upgrade and no reboot to do is left alone, so a second run changes nothing. The
engine's packages keep their versions: engine upgrades go through deploy.py's rolling upgrade."""

from __future__ import annotations

import weakref

from gevent.lock import BoundedSemaphore
from pyinfra import host, logger, state
from pyinfra.api import Host, State

from pyinfra_swarm.deploys.engine import turn_args
from pyinfra_swarm.deploys.firewall import resolve_backend
from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.facts import PendingPatches, Spec, read
from pyinfra_swarm.layout import ENGINE_PACKAGES
from pyinfra_swarm.operations import patching
from pyinfra_swarm.operations.firewall import UNIT
from pyinfra_swarm.operations.swarm import DRAINED_LABEL
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.plan.observe import gather
from pyinfra_swarm.settings import is_manager, setting

PENDING: Spec = {"patches": (PendingPatches, {"engine_packages": ENGINE_PACKAGES})}
_READ: weakref.WeakSet[State] = weakref.WeakSet()
_READING = BoundedSemaphore()


def read_pending(plan: ClusterPlan) -> None:
    """What each node of the run would upgrade, read on all of them at once (each refreshes its package
    lists first, seconds per host), once per run; `facts.read` then has it."""
    with _READING:  # every host's deploy code runs in its own greenlet: the first reads for all
        if state not in _READ:
            targets = [h for h in plan.in_limit if h in plan.reachable and plan.is_member(h)]
            gather(state, dict.fromkeys(targets, PENDING))
            _READ.add(state)


def firewall_unit(plan: ClusterPlan, this: Host) -> str | None:
    """The unit that puts the node's firewall in force at boot (checked to be active before Docker after a
    turn), when the node has it in place; None where the swarm's firewall is off or not deployed yet."""
    tools = plan.fact("firewall")
    backend = resolve_backend(setting(this, "swarm_firewall"), tools)
    if backend == "none":
        return None
    if backend == "firewalld":
        unit, in_place = "firewalld.service", tools["firewalld"]
    else:
        unit, in_place = UNIT, plan.fact("firewall_service").get(UNIT, {}).get("enabled", False)
    if not in_place:
        logger.warning(f"{this.name}: its firewall's unit {unit} is not in place (deploy.py puts it there): whether it "
                       "is in force before Docker is not checked in its turn")  # fmt: skip
        return None
    return unit


@step("Patch the OS, one node at a time", runs_on="every host", build=False)
def patch_nodes(plan: ClusterPlan, this: Host) -> None:
    """The node's turn when it has packages to upgrade or a reboot to do (`patch_reboot`), or when an
    unfinished turn left it drained: it gets its availability back in a turn, once it is healthy and its
    firewall in force (deploy.py gives such nodes back at once)."""
    if this not in plan.in_limit or this not in plan.reachable:
        return
    member = turn_args(plan, this)
    if member is None:
        host.noop("not a node of this swarm (deploy.py joins it): not patched")
        return
    read_pending(plan)
    pending = read(PendingPatches, engine_packages=ENGINE_PACKAGES)
    if pending["error"]:
        logger.warning(f"{this.name}: {pending['error']}; the upgrade uses the lists it has")
    arguments = {
        "upgrades": [name for name, _, _ in pending["upgrades"]],
        "reboot_reasons": pending["reboot"],
        "reboot": setting(this, "patch_reboot"),
        "engine_packages": ENGINE_PACKAGES,
        "package_manager": pending["manager"] or "apt",
        "firewall_unit": firewall_unit(plan, this),
        "reboot_timeout": setting(this, "patch_reboot_timeout"),
        "pause": setting(this, "patch_pause"),
        "ready_timeout": max(180, setting(this, "patch_reboot_timeout")),
        "left_drained": DRAINED_LABEL in (plan.node_of(this) or {}).get("labels", {}),
        **member,
    }
    # pyinfra runs a serial operation host by host and orders operations by where they are called: managers
    # take their turns at the first call site, workers at the second.
    if is_manager(this):
        patching.patched(name="Patch the OS and reboot if needed (managers, one at a time)", **arguments)
    else:
        patching.patched(name="Patch the OS and reboot if needed (workers, one at a time)", **arguments)
    if patching.has_turn(
        arguments["upgrades"], arguments["reboot"], arguments["reboot_reasons"], arguments["left_drained"]
    ):
        patching.summary(name="Summary of the patching")


def patch_cluster() -> None:
    """`patch.py`: each node's patching turn (see `patch_nodes`)."""
    patch_nodes()
