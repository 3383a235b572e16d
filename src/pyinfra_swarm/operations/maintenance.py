"""Node maintenance, one node at a time. `drained`: work that restarts dockerd on a node of the swarm (a new
daemon.json, an engine upgrade, an engine that must restart to run what is installed) runs as that node's
turn: drained through a manager and marked as drained by this run, its tasks waited for until they stopped,
the work done (undone if it fails), the node waited for until it is Ready (a manager also unlocked under
autolock, Reachable, with a leader elected), its availability given back and its mark removed, and the
services waited for until they run their replicas again. `released`: a node that a run left drained (it was
killed in the node's turn) gets its availability back. `removed`: a node taken out of the swarm for good.

Turns run with `_serial=True` (the deploys do): after a turn that fails, the later turns don't start, and the
node whose turn failed is left as it was found when that can be done (availability given back, a new
daemon.json undone); a node that doesn't come back stays drained, and marked."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
from pyinfra import logger
from pyinfra.api import Host, State, StringCommand, operation
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import OperationError

from pyinfra_swarm import controller
from pyinfra_swarm.facts import parse_replicas
from pyinfra_swarm.operations.callbacks import PerRun, expected_failures, first_answer
from pyinfra_swarm.operations.credentials import unlock_locked
from pyinfra_swarm.operations.swarm import DRAINED_LABEL, RESTORE_LABEL, connector_args

POLL = 1.0
DEFAULT_GRACE = 10  # seconds: Docker's stop_grace_period for a service that sets none
DRAIN_MARGIN = 60  # seconds beyond the longest stop_grace_period of a node's tasks to wait for them to stop
MIN_DRAIN_WAIT = 120


@dataclass
class _Turns:
    """What the turns of one run share: the host whose turn failed (the later ones don't start), and the
    services each leaving node found below their replicas."""

    failed: str | None = None
    below: dict[str, set[str]] = field(default_factory=dict)


_turns = PerRun(_Turns)


@operation(is_idempotent=False)
def drained(
    node_id: str,
    managers: list[str],
    commands: list[str],
    rollback: list[str] | None = None,
    availability: str = "active",
    drain_timeout: int | None = None,
    ready_timeout: int = 180,
    key_file: str | None = None,
    why: str = "engine maintenance",
):
    """Run `commands` on this host in its node's turn: drained, then brought back.

    + node_id: this host's swarm node ID
    + managers: inventory names of the managers to run `docker node` commands on (the first that answers)
    + commands: shell commands that restart or upgrade the engine
    + rollback: shell commands that undo `commands` when one of them fails, or when the node doesn't come back
      healthy after them (e.g. the previous daemon.json put back and Docker restarted)
    + availability: the availability the node gets back
    + drain_timeout: seconds to wait for its tasks to stop; None: the longest stop_grace_period of its tasks
      plus 60 s (at least 120 s)
    + ready_timeout: seconds to wait for the node, and the services, to be back
    + key_file: the swarm's unlock key on the controller: a manager locked by autolock is unlocked in its turn
    + why: what the turn is for, in words (printed when it starts)

    Use `_serial=True`: nodes take turns, and after a turn that fails the others don't start.

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
    yield FunctionCommand(
        turn,
        (node_id, managers, commands, rollback or [], availability, drain_timeout, ready_timeout, key_file, why),
        {},
    )


@expected_failures
def turn(state: State, host: Host, node_id: str, managers: list[str], commands: list[str], rollback: list[str],
         availability: str, drain_timeout: int | None, ready_timeout: int, key_file: str | None,
         why: str) -> None:  # fmt: skip
    """A node's turn (see `drained`)."""
    take_turn(state, host, Turn(node_id, managers, availability, drain_timeout, ready_timeout, key_file, why),
              lambda: _run_all(state, host, commands), rollback)  # fmt: skip


@dataclass(frozen=True)
class Turn:
    """A node's turn: which node, the managers to ask, and how long to wait for what (see `drained`)."""

    node_id: str
    managers: list[str]
    availability: str = "active"
    drain_timeout: int | None = None
    ready_timeout: int = 180
    key_file: str | None = None
    why: str = "engine maintenance"


def take_turn(state: State, host: Host, spec: Turn, work: Callable[[], str | None],
              rollback: list[str]) -> None:  # fmt: skip
    """Drain the node, do `work` (which returns what failed, or None), bring the node back, give it back
    its availability and wait for the services (see the module docstring). Raises OperationError when the
    turn fails, and the later turns of the run don't start."""
    turns = _turns(state)
    if turns.failed:
        raise OperationError(f"not started: the turn of {turns.failed} failed before this one; this node is left as "
                             "it is")  # fmt: skip
    node_id, managers, availability = spec.node_id, spec.managers, spec.availability
    try:
        _check_quorum(state, host, node_id, managers)
        below = _services_below(state, host, managers)
        logger.info(f"{host.print_prefix}its turn: {spec.why}")
        _drain(state, host, node_id, managers, availability, spec.drain_timeout)
        failed = work()
        if failed is None and spec.key_file:
            _unlock_if_locked(state, host, spec.key_file)
        problem = failed or _unhealthy_after(state, host, node_id, managers, spec.ready_timeout)
        if problem:
            _undo(state, host, node_id, managers, availability, rollback, spec.ready_timeout, problem)
        _give_back(state, host, node_id, managers, availability)
        _wait_services(state, host, managers, spec.ready_timeout, below)
    except OperationError:
        turns.failed = host.name
        raise
    logger.info(f"{host.print_prefix}node {node_id} is back: Ready, {availability}")


def quorum_problem(statuses: list[tuple[str, str]], node_id: str) -> str:
    """Why taking node `node_id` out now would cost the swarm its quorum ("" when it would not), from the
    managers' (ID, manager status) pairs. With every manager reachable the turn goes on (a swarm of one or two
    managers has no other way to restart them); with one already out, it goes on only while the rest keep a
    majority."""
    ids = [i for i, _ in statuses]
    if node_id not in ids:
        return ""
    up = [i for i, status in statuses if status in ("Leader", "Reachable")]
    majority = len(statuses) // 2 + 1
    left = len(up) - (node_id in up)
    if len(up) == len(statuses) or left >= majority:
        return ""
    return (f"only {len(up)} of {len(statuses)} managers are reachable: taking this one out would leave {left}, "
            f"fewer than the {majority} that keep quorum. Bring the others back first")  # fmt: skip


def _check_quorum(state: State, host: Host, node_id: str, managers: list[str]) -> None:
    """Refuse a manager's turn that would lose quorum (see `quorum_problem`)."""
    lines = _manager_run(state, host, managers,
                         "docker node ls --filter role=manager --format '{{.ID}} {{.ManagerStatus}}'")  # fmt: skip
    statuses = [(fields[0], fields[1] if len(fields) > 1 else "") for fields in (line.split() for line in lines)
                if fields]  # fmt: skip
    problem = quorum_problem(statuses, node_id)
    if problem:
        raise OperationError(f"not started: {problem}; nothing was done on this node")


def _undo(state: State, host: Host, node_id: str, managers: list[str], availability: str, rollback: list[str],
          timeout: int, problem: str) -> None:  # fmt: skip
    """After the turn's work failed (or the node came back unhealthy): undo it, and give the node its
    availability back if it is healthy then; always raises, naming what happened."""
    if not rollback:
        raise OperationError(f"{problem}; nothing to undo: node {node_id} is left drained (marked {DRAINED_LABEL}); "
                             "fix it and run again: the next run gives it back")  # fmt: skip
    logger.warning(f"{host.print_prefix}{problem}: undoing it")
    undo_failed = _run_all(state, host, rollback)
    unhealthy = undo_failed or _unhealthy_after(state, host, node_id, managers, timeout)
    if unhealthy:
        raise OperationError(f"{problem}; undoing it did not bring the node back ({unhealthy}): node {node_id} is left "
                             f"drained (marked {DRAINED_LABEL}); fix it and run again")  # fmt: skip
    _give_back(state, host, node_id, managers, availability)
    raise OperationError(f"{problem}; undone: the node runs as before, {availability} again; the turns after it "
                         "don't start")  # fmt: skip


def _run_all(state: State, host: Host, commands: list[str]) -> str | None:
    """Run shell commands on the host in order; the first failure, described (None: all ran)."""
    args = connector_args(state, host)
    for command in commands:
        status, output = host.run_shell_command(
            StringCommand(command), print_output=state.print_output, print_input=state.print_input, **args
        )
        if not status:
            lines = output.stderr.strip().splitlines() or output.stdout.strip().splitlines() or ["no output"]
            return f"`{command[:80]}` failed: {' / '.join(lines[-3:])}"
    return None


def _manager_run(state: State, host: Host, managers: list[str], command: str) -> list[str]:
    """Run a docker command on the first manager that answers (the node itself last: it may be the one
    restarting); its output lines. OperationError naming every manager's answer when none does."""
    hosts = [state.inventory.get_host(name) for name in managers]
    ordered = [m for m in hosts if m is not host] + [m for m in hosts if m is host]

    def ask(manager: Host) -> list[str]:
        status, output = manager.run_shell_command(
            StringCommand(command), print_output=False, **connector_args(state, manager)
        )
        if not status:
            raise LookupError(output.stderr.strip())
        return output.stdout_lines

    try:
        return first_answer([m for m in ordered if m.connected], ask)
    except LookupError as exc:
        raise OperationError(f"no manager answered `{command}` ({exc})") from None


def _services_below(state: State, host: Host, managers: list[str]) -> set[str]:
    """Services running fewer tasks than they want."""
    lines = _manager_run(state, host, managers, "docker service ls --format '{{.Name}} {{.Replicas}}'")
    return {name for name, (running, desired) in parse_replicas(lines).items() if running < desired}


def _wait(what: str, host: Host, timeout: float, check: Callable[[], str]) -> None:
    """Poll `check()` (which returns "" when done, else what is still awaited) until done or `timeout`."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        pending = check()
        if not pending:
            return
        now = time.monotonic()
        if now > deadline:
            raise OperationError(f"{what}: still {pending} after {timeout:.0f} s")
        if now - last_report >= 10:
            logger.info(f"{host.print_prefix}{what}: {pending}")
            last_report = now
        gevent.sleep(POLL)


def _drain_wait(state: State, host: Host, node_id: str, managers: list[str]) -> tuple[int, str]:
    """How long the node's tasks may take to stop: the longest stop_grace_period among them (Docker's 10 s
    where a service sets none) plus a margin, at least MIN_DRAIN_WAIT; and why, in words."""
    # Tasks running now, also those already told to stop (a service just removed or scaled down).
    tasks = (
        f"ids=$(docker node ps {node_id} --no-trunc --format '{{{{.ID}}}} {{{{.CurrentState}}}}' | "
        'awk \'$2 == "Running" {print $1}\'); [ -z "$ids" ] || '
    )
    lines = _manager_run(
        state,
        host,
        managers,
        tasks + "docker inspect --type task $ids --format '{{.Spec.ContainerSpec.StopGracePeriod}}'",
    )
    graces = [int(line) // 10**9 if line.strip().isdigit() else DEFAULT_GRACE for line in lines if line.strip()]
    longest = max(graces, default=DEFAULT_GRACE)
    return max(longest + DRAIN_MARGIN, MIN_DRAIN_WAIT), f"its tasks' longest stop_grace_period {longest} s + margin"


def _drain(state: State, host: Host, node_id: str, managers: list[str], availability: str,
           timeout: int | None) -> None:  # fmt: skip
    """Drain the node, marked as drained by this run, and wait until its tasks stopped; when they don't in
    time, give its availability back and fail."""
    if timeout is None:
        timeout, why = _drain_wait(state, host, node_id, managers)
    else:
        why = "swarm_drain_timeout"
    mark = f"{controller.who()} since {controller.started()}"
    logger.info(f"{host.print_prefix}draining node {node_id} (waiting up to {timeout} s for its tasks: {why})")
    _manager_run(state, host, managers, shlex.join([
        "docker", "node", "update", "--availability", "drain", "--label-add", f"{DRAINED_LABEL}={mark}",
        "--label-add", f"{RESTORE_LABEL}={availability}", node_id,
    ]))  # fmt: skip

    def running_tasks() -> str:
        states = _manager_run(state, host, managers, f"docker node ps {node_id} --format '{{{{.CurrentState}}}}'")
        count = sum(1 for line in states if line.startswith("Running"))
        return f"{count} task(s) running" if count else ""

    try:
        _wait("waiting for its tasks to stop", host, timeout, running_tasks)
    except OperationError as error:
        _give_back(state, host, node_id, managers, availability)
        raise OperationError(
            f"draining node {node_id} failed ({error}; {why}): its availability is {availability} again and "
            "nothing else was done here. Make its tasks stop in time, or set swarm_drain_timeout"
        ) from None


def _give_back(state: State, host: Host, node_id: str, managers: list[str], availability: str) -> None:
    """The node's availability back, and the mark of its turn removed."""
    _manager_run(state, host, managers, shlex.join([
        "docker", "node", "update", "--availability", availability, "--label-rm", DRAINED_LABEL, "--label-rm",
        RESTORE_LABEL, node_id,
    ]))  # fmt: skip


def _unlock_if_locked(state: State, host: Host, key_file: str) -> None:
    """A manager that restarted under autolock comes back locked: unlock it with the key file."""
    command = StringCommand("docker info --format '{{.Swarm.LocalNodeState}}'")
    args = connector_args(state, host)

    def settling() -> str:
        status, output = host.run_shell_command(command, print_output=False, **args)
        local = output.stdout.strip() if status else ""
        return "" if local in ("active", "locked", "inactive", "error") else f"swarm state {local or 'unknown'}"

    _wait("waiting for Docker to be back", host, 60, settling)
    unlock_locked(state, host, key_file)


def _unhealthy_after(state: State, host: Host, node_id: str, managers: list[str], timeout: int) -> str:
    """ "" once the node is Ready (a manager also Reachable, with a leader elected) within `timeout`, else
    what is wrong."""
    try:
        _wait_healthy(state, host, node_id, managers, timeout)
    except OperationError as error:
        return str(error)
    return ""


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


def _wait_services(state: State, host: Host, managers: list[str], timeout: int, before: set[str]) -> None:
    """Until every service that ran its replicas before this node's turn runs them again."""

    def services_back() -> str:
        below = _services_below(state, host, managers) - before
        return f"below their replicas: {', '.join(sorted(below))}" if below else ""

    _wait("waiting for the services", host, timeout, services_back)


@operation(is_idempotent=False)
def released(node_id: str, managers: list[str], availability: str):
    """Give a node that a run left drained (killed in the node's turn) its availability back, and remove the
    run's mark. Runs on any host of this run; the command goes to the first of `managers` that answers.

    + node_id: the node's ID
    + managers: inventory names of the swarm's managers
    + availability: the availability the node had before that turn (its mark says)

    **Example:**

    .. code:: python

        maintenance.released(name="Give worker1 back", node_id="x1", managers=["manager1"], availability="active")
    """
    yield FunctionCommand(_release, (node_id, managers, availability), {})


@expected_failures
def _release(state: State, host: Host, node_id: str, managers: list[str], availability: str) -> None:
    _give_back(state, host, node_id, managers, availability)
    logger.info(f"{host.print_prefix}node {node_id} was left drained by an unfinished run: {availability} again")


# Docker's packages, and its data, for `removed(purge=True)` and teardown.
PURGE_DATA = (
    "for d in /var/lib/docker /var/lib/containerd; do [ -d $d ] && find $d -mindepth 1 -maxdepth 1 -exec rm -rf {} +; "
    "done; rm -rf /etc/docker; true"
)


def purge_commands(installed: list[str], package_manager: str = "apt") -> list[str]:
    """Commands that uninstall the given Docker packages (with apt or dnf) and delete Docker's data."""
    commands = ["systemctl stop docker.socket docker.service containerd.service 2>/dev/null; true"]
    if installed and package_manager == "dnf":
        commands.append("dnf remove -y -q " + " ".join(sorted(installed)))
    elif installed:
        commands.append("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q " + " ".join(sorted(installed)))
    return [*commands, PURGE_DATA]


@operation()
def removed(node_id: str, managers: list[str], demote: bool = False, purge: list[str] | None = None,
            timeout: int = 180, drain_timeout: int | None = None, availability: str = "active",
            package_manager: str = "apt"):  # fmt: skip
    """Take this host out of the swarm safely: drain its node (through a manager), wait until its tasks
    stopped, demote it if it is a manager, make it leave, remove its node entry, and wait until the services
    run their replicas elsewhere; optionally uninstall Docker and delete its data.

    + node_id: this host's swarm node ID
    + managers: inventory names of managers that stay (the first that answers runs the node commands)
    + demote: the node is a manager: demote it before it leaves (the raft membership shrinks cleanly)
    + purge: the installed Docker packages to uninstall, with Docker's data; None keeps Docker
    + package_manager: what uninstalls them, ``apt`` or ``dnf``
    + timeout: seconds to wait for the services
    + drain_timeout: seconds to wait for its tasks to stop (None: as `drained` decides)
    + availability: the node's availability now, given back if its tasks don't stop in time

    Use `_serial=True`: one node leaves at a time.

    **Example:**

    .. code:: python

        maintenance.removed(name="Remove worker3", node_id=node_id, managers=["manager1"], _serial=True)
    """
    yield FunctionCommand(_drain_to_leave, (node_id, managers, availability, drain_timeout), {})
    if demote:
        yield FunctionCommand(_manager_command, (managers, f"docker node demote {node_id}"), {})
    yield "docker swarm leave --force"
    yield FunctionCommand(_forget, (node_id, managers, timeout), {})
    if purge is not None:
        yield from purge_commands(purge, package_manager)


@expected_failures
def _drain_to_leave(state: State, host: Host, node_id: str, managers: list[str], availability: str,
                    timeout: int | None) -> None:  # fmt: skip
    turns = _turns(state)
    if turns.failed:
        raise OperationError(f"not started: {turns.failed} did not leave cleanly before this one")
    try:
        turns.below[host.name] = _services_below(state, host, managers)
        _drain(state, host, node_id, managers, availability, timeout)
    except OperationError:
        turns.failed = host.name
        raise


@expected_failures
def _manager_command(state: State, host: Host, managers: list[str], command: str) -> None:
    _manager_run(state, host, managers, command)


@expected_failures
def _forget(state: State, host: Host, node_id: str, managers: list[str], timeout: int) -> None:
    turns = _turns(state)
    try:
        _manager_run(state, host, managers, f"docker node rm --force {node_id}")
        _wait_services(state, host, managers, timeout, turns.below.pop(host.name, set()))
    except OperationError:
        turns.failed = host.name
        raise
    logger.info(f"{host.print_prefix}node {node_id} left the swarm and its entry is removed")
