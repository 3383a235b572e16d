"""Node maintenance one node at a time. `drained`: anything that restarts dockerd on a node of the swarm (a
daemon.json change that needs a restart, an engine upgrade, a source switch) runs while that node is drained,
and the next node starts only once this one is Ready again (a manager also Reachable, with a leader elected)
and the services are back at their replicas. `removed`: a node taken out of the swarm for good, drained,
demoted, left and forgotten. Run with `_serial=True`; the deploys do. After a node that doesn't come back
healthy, the others are left untouched."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import gevent
from pyinfra import logger
from pyinfra.api import Host, State, StringCommand, operation
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import OperationError

from pyinfra_swarm.operations.swarm import connector_args
from pyinfra_swarm.plan import ClusterPlan, plan_cluster

POLL = 2.0


@operation(is_idempotent=False)
def drained(
    node_id: str,
    commands: list[str],
    managers: list[str],
    availability: str = "active",
    drain_timeout: int = 120,
    ready_timeout: int = 180,
):
    """Run `commands` on this host while its swarm node is drained, then bring it back.

    + node_id: this host's swarm node ID
    + commands: shell commands that restart or upgrade the engine
    + managers: inventory names of the managers to run `docker node` commands on (first that answers)
    + availability: the availability to restore afterwards
    + drain_timeout: seconds to wait for the node's tasks to stop
    + ready_timeout: seconds to wait for the node (and the services) to be back

    Use `_serial=True`: nodes then take turns, and after a node that doesn't come back healthy the others
    are left untouched.

    **Example:**

    .. code:: python

        maintenance.drained(
            name="Restart Docker",
            node_id=node_id,
            commands=["systemctl restart docker"],
            managers=["manager1", "manager2"],
            _serial=True,
        )
    """
    yield FunctionCommand(_drain, (node_id, managers, drain_timeout), {})
    yield from commands
    yield FunctionCommand(_restore, (node_id, managers, availability, ready_timeout), {})


def window(plan: ClusterPlan, target: Host) -> dict | None:
    """`drained`'s arguments for a host whose node is in this swarm (its engine must not restart with the
    others), None for a host that is not in it yet (nothing runs on it: it may restart at will)."""
    entry = plan.node_of(target) if plan.steps.get(target) == "member" else None
    if entry is None:
        return None
    managers = [m.name for m in plan.managers if plan.in_this_swarm(m)]
    return {"node_id": entry["id"], "managers": managers, "availability": entry["availability"], "_serial": True}


def in_turn(name: str, commands: list[str], member: dict, manager: bool) -> None:
    """Plan `drained` for the host being deployed, its node taking its turn: managers first, then workers.
    pyinfra runs a serial operation host by host in no set order, and orders operations by where they are
    called: hence one call site for managers, and a later one for workers."""
    if manager:
        drained(name=f"{name} (managers, one at a time)", commands=commands, **member)
    else:
        drained(name=f"{name} (workers, one at a time)", commands=commands, **member)


def _manager_run(state: State, host: Host, managers: list[str], command: str) -> list[str]:
    """Run a docker command on the first manager that answers (the node itself last: it may be the one
    restarting); its output lines. OperationError naming every manager's answer when none does."""
    hosts = [state.inventory.get_host(name) for name in managers]
    ordered = [m for m in hosts if m is not host] + [m for m in hosts if m is host]
    problems = []
    for manager in ordered:
        if not manager.connected:
            continue
        status, output = manager.run_shell_command(
            StringCommand(command), print_output=False, **connector_args(state, manager)
        )
        if status:
            return output.stdout_lines
        problems.append(f"{manager.name}: {output.stderr.strip()}")
    raise OperationError(f"no manager answered `{command}` ({'; '.join(problems) or 'none connected'})")


def _services_below(state: State, host: Host, managers: list[str]) -> set[str]:
    """Services running fewer tasks than they want."""
    lines = _manager_run(state, host, managers, "docker service ls --format '{{.Name}} {{.Replicas}}'")
    below = set()
    for line in lines:
        name, _, replicas = line.partition(" ")
        running, _, desired = replicas.split(" ")[0].partition("/")
        if running.isdigit() and desired.isdigit() and int(running) < int(desired):
            below.add(name)
    return below


def _wait(what: str, host: Host, timeout: int, check) -> None:
    """Poll `check()` (which returns "" when done, else what is still awaited) until done or `timeout`."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        pending = check()
        if not pending:
            return
        now = time.monotonic()
        if now > deadline:
            raise OperationError(f"{what}: still {pending} after {timeout} s")
        if now - last_report >= 10:
            logger.info(f"{host.print_prefix}{what}: {pending}")
            last_report = now
        gevent.sleep(POLL)


def _drain(state: State, host: Host, node_id: str, managers: list[str], timeout: int) -> None:
    run = plan_cluster(state).run
    if "maintenance_failed" in run:
        raise OperationError(f"not started: {run['maintenance_failed']} did not come back healthy before it; fix that")
    run.setdefault("services_below", {})[host.name] = _services_below(state, host, managers)
    logger.info(f"{host.print_prefix}draining node {node_id} for engine maintenance")
    _manager_run(state, host, managers, f"docker node update --availability drain {node_id}")

    def running_tasks() -> str:
        states = _manager_run(state, host, managers, f"docker node ps {node_id} --format '{{{{.CurrentState}}}}'")
        count = sum(1 for line in states if line.startswith("Running"))
        return f"{count} task(s) running" if count else ""

    _wait("waiting for its tasks to move", host, timeout, running_tasks)


@contextlib.contextmanager
def _turn_of(state: State, host: Host) -> Iterator[None]:
    """A node's turn: when it doesn't come back healthy, the nodes after it are left untouched."""
    try:
        yield
    except OperationError:
        plan_cluster(state).run["maintenance_failed"] = host.name
        raise


def _restore(state: State, host: Host, node_id: str, managers: list[str], availability: str, timeout: int) -> None:
    with _turn_of(state, host):
        _wait_healthy(state, host, node_id, managers, timeout)
        _manager_run(state, host, managers, f"docker node update --availability {availability} {node_id}")
        _wait_services(state, host, managers, timeout)
    logger.info(f"{host.print_prefix}node {node_id} is back: Ready, {availability}")


def _wait_services(state: State, host: Host, managers: list[str], timeout: int) -> None:
    """Until every service that ran its replicas before this node's turn runs them again."""
    before = plan_cluster(state).run.get("services_below", {}).get(host.name, set())

    def services_back() -> str:
        below = _services_below(state, host, managers) - before
        return f"below their replicas: {', '.join(sorted(below))}" if below else ""

    _wait("waiting for the services", host, timeout, services_back)


# Docker's packages, and its data, for `removed(purge=True)` and teardown.
PURGE_DATA = (
    "for d in /var/lib/docker /var/lib/containerd; do [ -d $d ] && find $d -mindepth 1 -maxdepth 1 -exec rm -rf {} +; "
    "done; rm -rf /etc/docker; true"
)


def purge_commands(installed: list[str]) -> list[str]:
    """Commands that uninstall the given Docker packages and delete Docker's data."""
    commands = ["systemctl stop docker.socket docker.service containerd.service 2>/dev/null; true"]
    if installed:
        commands.append("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q " + " ".join(sorted(installed)))
    return [*commands, PURGE_DATA]


@operation()
def removed(node_id: str, managers: list[str], demote: bool = False, purge: list[str] | None = None,
            timeout: int = 180):  # fmt: skip
    """Take this host out of the swarm safely: drain its node (through a manager), wait until its tasks
    stopped, demote it if it is a manager, make it leave, remove its node entry, and wait until the services
    run their replicas elsewhere; optionally uninstall Docker and delete its data.

    + node_id: this host's swarm node ID
    + managers: inventory names of managers that stay (the first that answers runs the node commands)
    + demote: the node is a manager: demote it before it leaves (the raft membership shrinks cleanly)
    + purge: the installed Docker packages to uninstall, with Docker's data; None keeps Docker
    + timeout: seconds to wait for the tasks to move, and for the services

    Use `_serial=True`: one node leaves at a time.

    **Example:**

    .. code:: python

        maintenance.removed(name="Remove worker3", node_id=node_id, managers=["manager1"], _serial=True)
    """
    yield FunctionCommand(_drain, (node_id, managers, timeout), {})
    if demote:
        yield FunctionCommand(_manager_command, (managers, f"docker node demote {node_id}"), {})
    yield "docker swarm leave --force"
    yield FunctionCommand(_forget, (node_id, managers, timeout), {})
    if purge is not None:
        yield from purge_commands(purge)


def _manager_command(state: State, host: Host, managers: list[str], command: str) -> None:
    _manager_run(state, host, managers, command)


def _forget(state: State, host: Host, node_id: str, managers: list[str], timeout: int) -> None:
    with _turn_of(state, host):
        _manager_run(state, host, managers, f"docker node rm --force {node_id}")
        _wait_services(state, host, managers, timeout)
    logger.info(f"{host.print_prefix}node {node_id} left the swarm and its entry is removed")


def _wait_healthy(state: State, host: Host, node_id: str, managers: list[str], timeout: int) -> None:
    """Until the node is Ready and, for a manager, Reachable with a leader elected."""
    fmt = "{{.Status.State}} {{if .ManagerStatus}}{{.ManagerStatus.Reachability}}{{end}}"

    def not_healthy() -> str:
        try:
            fields = _manager_run(state, host, managers, f"docker node inspect {node_id} --format '{fmt}'")[0].split()
            leader = _manager_run(state, host, managers, "docker node ls --filter role=manager -q")
        except (OperationError, IndexError):
            return "not answering"
        if fields[0] != "ready":
            return f"node {fields[0]}"
        if len(fields) > 1 and fields[1] != "reachable":
            return f"manager {fields[1]}"
        return "" if leader else "no leader"

    _wait("waiting for the node to be Ready", host, timeout, not_healthy)
