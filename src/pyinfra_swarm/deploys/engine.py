"""Engine maintenance on the nodes of the swarm, one node at a time: whatever makes dockerd restart (a new
daemon.json that needs a restart, an engine package to install or switch, an engine upgraded but still running
the old binary, a daemon.json changed after the engine started) is done in that node's turn, drained (see
operations/maintenance.py). What is pending is read from the node itself (facts.EngineState), so a run that
stopped part-way (a failed turn, Ctrl-C, a crashed controller) is finished by the next one. Nodes that a run
left drained get their availability back first, whatever the next run's --limit."""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import Host

from pyinfra_swarm.deploys.daemon import STAGE, daemon_change
from pyinfra_swarm.deploys.install import engine_transaction
from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.facts import DAEMON_JSON, PREVIOUS_DAEMON_JSON, STAGED_DAEMON_JSON
from pyinfra_swarm.operations import maintenance
from pyinfra_swarm.operations.swarm import DRAINED_LABEL, RESTORE_LABEL
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.settings import is_manager, setting, unlock_key_file

RESTART = "systemctl restart docker.service"
# The staged daemon.json put in place, the one it replaces kept until the turn ends well; and put back.
APPLY_STAGED = (
    f"mkdir -p /etc/docker && if [ -f {DAEMON_JSON} ]; then cp -p {DAEMON_JSON} {PREVIOUS_DAEMON_JSON}; "
    f"else rm -f {PREVIOUS_DAEMON_JSON}; fi && mv {STAGED_DAEMON_JSON} {DAEMON_JSON}"
)
PUT_BACK = (
    f"if [ -f {PREVIOUS_DAEMON_JSON} ]; then mv {PREVIOUS_DAEMON_JSON} {DAEMON_JSON}; else rm -f {DAEMON_JSON}; fi"
)


def turn_args(plan: ClusterPlan, target: Host) -> dict[str, Any] | None:
    """`maintenance.drained`'s arguments for a host whose node is in this swarm (its engine must not restart
    with the others), None for a host that is not in it yet (it may restart at will). A node that a run left
    drained gets back the availability its mark names."""
    entry = plan.node_of(target) if plan.is_member(target) else None
    if entry is None:
        return None
    managers = [m.name for m in plan.managers if plan.in_this_swarm(m)]
    availability = entry["labels"].get(RESTORE_LABEL) or entry["availability"]
    return {
        "node_id": entry["id"],
        "managers": managers,
        "availability": availability,
        "drain_timeout": setting(target, "swarm_drain_timeout"),
        "key_file": unlock_key_file(target) if is_manager(target) else None,
        "_serial": True,
    }


def in_turn(name: str, commands: list[str], rollback: list[str], why: str, member: dict[str, Any],
            manager: bool) -> None:  # fmt: skip
    """Plan `drained` for the host being deployed, its node taking its turn: managers first, then workers.
    pyinfra runs a serial operation host by host in no set order, and orders operations by where they are
    called: hence one call site for managers, and a later one for workers."""
    if manager:
        maintenance.drained(name=f"{name} (managers, one at a time)", commands=commands, rollback=rollback, why=why,
                            **member)  # fmt: skip
    else:
        maintenance.drained(name=f"{name} (workers, one at a time)", commands=commands, rollback=rollback, why=why,
                            **member)  # fmt: skip


def left_drained(plan: ClusterPlan) -> list[dict[str, Any]]:
    """Node entries that a run left drained (marked by its turn, which never ended)."""
    return [n for n in plan.nodes if DRAINED_LABEL in n["labels"]]


@step("Nodes left drained by an unfinished run", runs_on="every host")
def give_back_drained(plan: ClusterPlan, this: Host) -> None:
    """Give every node that an earlier run left drained (killed in its turn) its availability back, from the
    first host of this run, whatever its --limit: the command goes to a manager. A node whose work is still
    pending takes its turn again later in this run (or in one whose limit holds it)."""
    runner = next((h for h in plan.reachable if h in plan.in_limit), None)
    if this is not runner or plan.recovering:
        return
    managers = [m.name for m in plan.managers if plan.in_this_swarm(m)]
    for entry in host.loop(left_drained(plan)):
        maintenance.released(
            name=f"Give {entry['hostname']} its availability back (left drained by an unfinished run)",
            node_id=entry["id"],
            managers=managers,
            availability=entry["labels"].get(RESTORE_LABEL) or "active",
        )


def engine_work(plan: ClusterPlan, target: Host) -> tuple[list[str], list[str], list[str]]:
    """(commands, rollback, reasons) of a node's turn: nothing when its engine runs what data and disk ask."""
    commands: list[str] = []
    rollback: list[str] = []
    reasons: list[str] = []
    if daemon_change(plan, target).action == STAGE:
        commands.append(APPLY_STAGED)
        rollback = [PUT_BACK, RESTART]
        reasons.append("a new daemon.json")
    transaction = engine_transaction(plan, target)
    if transaction:
        commands += transaction
        reasons.append("an engine package change")
    engine = plan.fact("engine", target)
    if engine["replaced"]:
        reasons.append("the engine was upgraded but the old one still runs")
    if engine["config_newer"]:
        reasons.append("daemon.json changed after the engine started")
    if not reasons:
        return [], [], []
    commands.append(RESTART)
    if rollback:
        commands.append(f"rm -f {PREVIOUS_DAEMON_JSON}")
    return commands, rollback, reasons


@step("Engine maintenance, one node at a time")
def roll_engines(plan: ClusterPlan, this: Host) -> None:
    """The node's turn, when its engine must restart (see the module docstring). A turn that fails stops
    the turns after it; the failed node is undone where that can be done."""
    member = turn_args(plan, this)
    if member is None:
        return
    commands, rollback, reasons = engine_work(plan, this)
    if commands:
        in_turn("Restart Docker in the node's turn", commands, rollback, "; ".join(reasons), member, is_manager(this))
