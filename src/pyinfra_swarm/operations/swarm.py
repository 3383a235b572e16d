"""Swarm operations: membership (init, join, leave), a node's role, labels and availability, overlay networks,
secrets and configs, stacks. Each reads the facts it needs, yields commands only for what differs and
says so (`host.noop`) otherwise, so any deploy can call them:

.. code:: python

    from pyinfra_swarm.operations import swarm

    swarm.node(name="db1 holds the database", node="db1", labels={"db": "true"})
    swarm.secret(name="Database password", secret_name="db_pw", value=password)
    swarm.stack(name="Deploy app", stack_name="app", path="/etc/app/app.yml", text=rendered)

Run them on a manager, but `init`, `join` and `leave`, which run on the host that changes. Secret values,
join tokens and configs go through stdin, never on a command line."""

from __future__ import annotations

import base64
import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.lock import BoundedSemaphore
from pyinfra import host, logger
from pyinfra.api import Host, State, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import OperationError

from pyinfra_swarm.facts import (
    DockerSwarm,
    FileHashes,
    LocalSwarm,
    StackServices,
    SwarmNodes,
    SwarmObjects,
    SwarmStacks,
    docker_post,
    parse_replicas,
    read,
    sha256_text,
)
from pyinfra_swarm.operations.callbacks import PerRun, expected_failures, first_answer
from pyinfra_swarm.operations.private import write_command

SWARM_PORT = 2377
MANAGED_LABELS = "pyinfra-swarm.managed-labels"  # node label listing the labels `node` manages
AVAILABILITY_LABEL = "pyinfra-swarm.availability"  # node label: the pause or drain that `node` set (from data)
DRAINED_LABEL = "pyinfra-swarm.drained"  # node label: which run drained the node for its turn, since when
RESTORE_LABEL = "pyinfra-swarm.restore"  # node label: the availability the node gets back after its turn
LOCK_CONFIG = "pyinfra-swarm.lock"  # swarm config: the cluster lock (lock.py), held by one run at a time
AVAILABLE = {"drain": 0, "pause": 1, "active": 2}  # how available each availability leaves a node
RETRIES = 15  # transient errors (leader election) are retried for RETRIES * RETRY_DELAY seconds
RETRY_DELAY = 2.0
POLL = 2.0
# `docker swarm join` takes the token only as an argument; Docker's API takes it in the request body.
JOIN_REQUEST = docker_post("/swarm/join")


def _in_a_swarm() -> str | None:
    """This host's swarm state when it is in (or joining, or locked in) a swarm, else None."""
    local = LocalSwarm.of(read(DockerSwarm))
    return local.state if local.joined else None


@operation()
def init(
    advertise_addr: str,
    default_addr_pool: list[str] | None = None,
    default_addr_pool_mask_length: int | None = None,
    data_path_port: int | None = None,
    availability: str | None = None,
    data_path_addr: str | None = None,
):
    """Initialise a new swarm on this host, listening and advertising on one address.

    + advertise_addr: the address (or interface) other nodes reach this host on
    + default_addr_pool: CIDRs overlay networks take their subnets from
    + default_addr_pool_mask_length: the size of each such subnet
    + data_path_port: the VXLAN port (4789 when None)
    + availability: this node's availability (active when None)
    + data_path_addr: the address (or interface) for overlay traffic

    **Example:**

    .. code:: python

        swarm.init(name="Start the swarm", advertise_addr="10.0.0.10")
    """
    state = _in_a_swarm()
    if state:
        host.noop(f"this host is in a swarm already ({state})")
        return
    args = ["docker", "swarm", "init", "--advertise-addr", advertise_addr, "--listen-addr",
            f"{advertise_addr}:{SWARM_PORT}"]  # fmt: skip
    if data_path_addr:
        args += ["--data-path-addr", data_path_addr]
    for pool in default_addr_pool or []:
        args += ["--default-addr-pool", pool]
    if default_addr_pool_mask_length:
        args += ["--default-addr-pool-mask-length", str(default_addr_pool_mask_length)]
    if data_path_port and data_path_port != 4789:
        args += ["--data-path-port", str(data_path_port)]
    if availability and availability != "active":
        args += ["--availability", availability]
    yield StringCommand(*args, ">/dev/null")  # its output holds the worker join token


@operation()
def force_new_cluster(advertise_addr: str):
    """Recover a swarm that lost quorum on this manager, one of the survivors: it becomes the only manager of
    a swarm that keeps the services, secrets, configs, networks and worker nodes (`docker swarm init
    --force-new-cluster`). Only for a swarm without a leader (the plan checks that): on a healthy swarm it
    would drop the other managers from raft. Lost managers that come back with their old state rejoin as
    workers (Docker promotes them again); the next deploy joins fresh ones.

    + advertise_addr: this manager's address

    **Example:**

    .. code:: python

        swarm.force_new_cluster(name="Recover the swarm here", advertise_addr="10.0.0.10")
    """
    if not LocalSwarm.of(read(DockerSwarm)).control:
        raise OperationError("this host is not a manager of a swarm: there is nothing to recover here")
    yield force_new_cluster_command(advertise_addr)


def force_new_cluster_command(advertise_addr: str) -> StringCommand:
    """`docker swarm init --force-new-cluster` on this host's address (its output, with a join token, dropped)."""
    return StringCommand(
        "docker", "swarm", "init", "--force-new-cluster", "--advertise-addr", advertise_addr,
        "--listen-addr", f"{advertise_addr}:{SWARM_PORT}", ">/dev/null",
    )  # fmt: skip


@operation()
def join(role: str, advertise_addr: str, managers: dict[str, str], data_path_addr: str | None = None,
         after_leave: bool = False):  # fmt: skip
    """Join this host to the swarm as `role`, through the first of `managers` that answers, with a token
    read from a manager when the join runs. The token goes to Docker's API on stdin, never on a command
    line (sudo's log, `ps`, auditd).

    + role: manager or worker
    + advertise_addr: the address (or interface) other nodes reach this host on
    + managers: the swarm's managers (inventory name: advertise address), in order: the first that answers gives
      the token, and the join goes through it, or the next
    + data_path_addr: the address (or interface) for overlay traffic
    + after_leave: a `leave` of another swarm is planned before this: join although the host is in one now

    **Example:**

    .. code:: python

        swarm.join(name="Join", role="worker", advertise_addr="10.0.0.21", managers={"manager1": "10.0.0.11"})
    """
    state = _in_a_swarm()
    if state and not after_leave:
        host.noop(f"this host is in a swarm already ({state})")
        return
    yield FunctionCommand(_join, (role, advertise_addr, managers, data_path_addr), {})


@operation()
def leave():
    """Leave whatever swarm this host is in (`--force`: a manager's raft state goes with it).

    **Example:**

    .. code:: python

        swarm.leave(name="Leave the old swarm")
    """
    if not _in_a_swarm():
        host.noop("this host is in no swarm")
        return
    yield "docker swarm leave --force"


@operation()
def barrier():
    """Runs nothing. Every host plans it at the same place, so pyinfra runs what comes after it on any host
    (joins) only once every host has run what comes before it (its firewall): pyinfra orders operations
    across hosts by how many each host has before them, so a host with nothing else to do would otherwise
    join before its manager's firewall lets it in."""
    yield from ()


@operation()
def node(
    node: str,
    role: str | None = None,
    labels: dict[str, Any] | None = None,
    availability: str | None = None,
    present: bool = True,
    joining: bool = False,
):
    """Bring one swarm node to a role, labels and availability (on a manager).

    + node: the node's ID or hostname
    + role: manager or worker (promoted or demoted); None leaves it
    + labels: the labels this operation manages: missing or different ones are set, and labels it set
      before that `labels` no longer has are removed (it keeps their names in the node label
      `pyinfra-swarm.managed-labels`); labels set by others are left alone; None leaves labels alone
    + availability: active, pause or drain; None leaves it. A node made less available by someone else (a
      drain by hand) is left so, with a warning, and so is a node drained for a maintenance turn (the turn, or
      the next run, gives it back)
    + present: False removes the node's entry from the swarm (demoted first if it is a manager)
    + joining: the node joins in this same run (not listed yet): `node` is its hostname, and it starts as a
      node with no labels, active; if it isn't in the swarm when this runs (its host failed), nothing happens

    **Example:**

    .. code:: python

        swarm.node(name="Label db1", node="db1", labels={"db": "true"}, availability="active")
    """
    nodes = [] if joining else read(SwarmNodes) or []
    if not present:
        commands = _removal_commands(node, nodes)
        if not commands:
            host.noop(f"node {node} is not in the swarm")
        yield from commands
        return
    commands = _node_commands(nodes, node, role, labels, availability, joining)
    if not commands:
        host.noop(f"node {node} has its role, labels and availability")
    yield from commands


@operation()
def nodes(wanted: list[dict[str, Any]], remove: list[str] | None = None):
    """Bring the swarm's nodes to their roles, labels and availability in one operation on a manager, from one
    read of the node list: only the differences, a command or two per node that differs (what `node` does
    for one node).

    + wanted: one mapping per node with the arguments of `node` (``node``, and ``role``, ``labels``,
      ``availability``, ``joining`` as it takes them)
    + remove: nodes (IDs or hostnames) whose entries are removed first (demoted first if managers)

    **Example:**

    .. code:: python

        swarm.nodes(name="Nodes", wanted=[{"node": "db1", "labels": {"db": "true"}},
                                          {"node": "web1", "role": "worker", "availability": "active"}])
    """
    listed = read(SwarmNodes) or []
    commands = [command for node in remove or [] for command in _removal_commands(node, listed)]
    for entry in wanted:
        options = {key: entry.get(key) for key in ("role", "labels", "availability")}
        joining = bool(entry.get("joining"))
        commands += _node_commands([] if joining else listed, entry["node"], joining=joining, **options)
    if not commands:
        host.noop(f"{len(wanted)} node(s) have their role, labels and availability")
    yield from commands


def _removal_commands(node: str, listed: list[dict[str, Any]]) -> list[str]:
    """What removes a node's entry (none when it isn't listed)."""
    entry = next((n for n in listed if node in (n["id"], n["hostname"])), None)
    if entry is None:
        return []
    commands = []
    if entry["role"] == "manager":
        # A manager dropped from raft (by --force-new-cluster) is demoted by its removal alone.
        commands.append(
            f'out=$(docker node demote {entry["id"]} 2>&1) || case "$out" in '
            '*"can\'t find manager in raft memberlist"*) ;; *) echo "$out" >&2; exit 1 ;; esac'
        )
    return [*commands, f"docker node rm --force {entry['id']}"]


def _node_commands(listed: list[dict[str, Any]], node: str, role: str | None = None,
                   labels: dict[str, Any] | None = None, availability: str | None = None,
                   joining: bool = False) -> list[str]:  # fmt: skip
    """What brings one node to its role, labels and availability (see `node`); none when it has them."""
    entry = next((n for n in listed if node in (n["id"], n["hostname"])), None)
    current = entry or {"role": role, "labels": {}, "availability": "active"}
    target = entry["id"] if entry else node
    commands = []
    if role and current["role"] != role:
        commands.append(f"docker node {'promote' if role == 'manager' else 'demote'} {target}")
    update = _update_args(current, labels, _availability(node, current, availability))
    if update:
        commands.append(shlex.join(["docker", "node", "update", *update, target]))
    if commands and joining:
        # The host joins earlier in this run; if it failed before that, the manager leaves it for the next run
        # rather than fail too.
        skipped = shlex.quote(
            f"node {node} is not in the swarm (its host failed before joining): left for the next run"
        )
        listed_now = f"docker node inspect {shlex.quote(node)} >/dev/null 2>&1"
        return [f"if {listed_now}; then {' && '.join(commands)}; else echo {skipped}; fi"]
    return commands


def _availability(node: str, current: dict[str, Any], wanted: str | None) -> str | None:
    """The availability `node` may set: None (leave it) for a node in a maintenance turn's hands, and for one
    that someone else made less available than data asks (never undone silently: a drain by hand may be
    for work on the machine)."""
    now = current["availability"]
    if wanted is None or DRAINED_LABEL in current["labels"]:
        return None
    if AVAILABLE[wanted] > AVAILABLE.get(now, 2) and current["labels"].get(AVAILABILITY_LABEL) != now:
        logger.warning(
            f"{host.print_prefix}node {node} is {now}, not by this deploy (by hand?): left {now}. Set "
            f"swarm_availability: {now} for it to keep it so, or `docker node update --availability {wanted}` "
            "once its work is done"
        )
        return None
    return wanted


def _update_args(current: dict[str, Any], labels: dict[str, Any] | None, availability: str | None) -> list[str]:
    args: list[str] = []
    if labels is not None:
        present = current["labels"]
        wanted = {key: _label_value(value) for key, value in labels.items()}
        managed = [key for key in present.get(MANAGED_LABELS, "").split(",") if key]
        for key, value in sorted(wanted.items()):
            if present.get(key) != value:
                args += ["--label-add", f"{key}={value}"]
        for key in managed:
            if key not in wanted and key in present:
                args += ["--label-rm", key]
        marker = ",".join(sorted(wanted))
        if present.get(MANAGED_LABELS, "") != marker:
            args += ["--label-add", f"{MANAGED_LABELS}={marker}"] if marker else ["--label-rm", MANAGED_LABELS]
    if availability and availability != current["availability"]:
        args += ["--availability", availability]
    if availability:  # a pause or drain this deploy sets is recorded, so a later run may undo it
        recorded = current["labels"].get(AVAILABILITY_LABEL)
        if availability != "active" and recorded != availability:
            args += ["--label-add", f"{AVAILABILITY_LABEL}={availability}"]
        elif availability == "active" and recorded:
            args += ["--label-rm", AVAILABILITY_LABEL]
    return args


def _label_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@operation()
def network(network_name: str, attachable: bool = False, subnet: str | None = None, mtu: int | None = None,
            encrypted: bool = False):  # fmt: skip
    """An overlay network (on a manager), created when missing; an existing one is left as it is.

    + network_name: the network's name
    + attachable: standalone containers may attach
    + subnet: its subnet (from the swarm's address pool when None)
    + mtu: its MTU (the underlay's minus 50 for VXLAN, at most)
    + encrypted: IPsec between nodes (needs ESP/GCM in every node's kernel)

    **Example:**

    .. code:: python

        swarm.network(name="App network", network_name="app", attachable=True)
    """
    if network_name in read(SwarmObjects)["network"]:
        host.noop(f"network {network_name} exists")
        return
    args = ["docker", "network", "create", "--driver", "overlay"]
    if attachable:
        args.append("--attachable")
    if subnet:
        args += ["--subnet", str(subnet)]
    if mtu:
        args += ["--opt", f"com.docker.network.driver.mtu={mtu}"]
    if encrypted:
        args += ["--opt", "encrypted"]
    yield shlex.join([*args, network_name])


@operation()
def secret(secret_name: str, value: str):
    """A swarm secret (on a manager), created when missing. Secrets can't change: give a changed value a
    new name (the deploys use NAME_<hash of the value>). The value goes through stdin and is never printed.

    + secret_name: the secret's name
    + value: its content

    **Example:**

    .. code:: python

        swarm.secret(name="Database password", secret_name="db_pw_v2", value=password)
    """
    yield from _object("secret", secret_name, value)


@operation()
def config(config_name: str, value: str):
    """A swarm config (on a manager), created when missing; like `secret`.

    + config_name: the config's name
    + value: its content
    """
    yield from _object("config", config_name, value)


def _object(kind: str, name: str, value: str):
    if name in read(SwarmObjects)[kind]:
        host.noop(f"{kind} {name} exists")
        return
    # base64 on stdin: the exact bytes (pyinfra ends what it sends on stdin with a newline)
    yield StringCommand(f"base64 -d | docker {kind} create {shlex.quote(name)} -",
                        _stdin=base64.b64encode(value.encode()).decode())  # fmt: skip


STACK_FAILURE = ("rollback", "pause")  # what a failed stack update leaves: the previous spec, or Docker's pause
STUCK = ("paused", "rollback_started", "rollback_completed", "rollback_paused")
ROLLBACK_WAIT = 180  # seconds a rollback is waited for at least, whatever the stack's (forward) timeout


def stack_problems(services: dict[str, dict[str, Any]], stack: str, expected: list[str] | None) -> list[str]:
    """What keeps a deployed stack from running as its file says (StackServices of the stack), in words:
    an update under way, paused or rolled back, a service below its replicas, a service of the file missing."""
    problems = []
    for name, service in sorted(services.items()):
        if service["update"] in ("updating", "paused", "rollback_started", "rollback_paused"):
            problems.append(f"{name}: update {service['update']}")
        if service["running"] < service["desired"]:
            problems.append(f"{name}: {service['running']}/{service['desired']} running")
    missing = sorted(f"{stack}_{name}" for name in expected or [] if f"{stack}_{name}" not in services)
    if missing:
        problems.append(f"missing service(s) {', '.join(missing)}")
    return problems


@operation()
def stack(stack_name: str, path: str, text: str | None = None, timeout: int = 180, force: bool = False,
          present: bool = True, services: list[str] | None = None, on_failure: str = "rollback"):  # fmt: skip
    """A stack (on a manager), deployed with `docker stack deploy --with-registry-auth --prune` when its file
    differs from the one last deployed *well*, or when the stack doesn't run as that file says (an update
    under way, paused or rolled back, a service below its replicas or missing): a failed update never passes
    for "up to date" on the next run. Then waited for until every service runs its replicas of its present
    spec; the new file takes the old one's place only then. A failed update (paused, rolled back by Docker, or
    not converged in time) fails the operation with the failing tasks' errors, after rolling the services this
    deploy changed back to the spec they had before it (`docker service rollback`), or leaving them as Docker
    paused them (`on_failure: pause`).

    + stack_name: the stack's name
    + path: where its file goes on this host (readable by root only; the new one waits beside it as PATH.next)
    + text: the file's content (a rendered compose file); None: the file is there already
    + timeout: seconds to wait for convergence
    + force: deploy even when the file is the same (an image it uses was rebuilt)
    + present: False removes the stack
    + services: the names of the file's services (without the stack's prefix): one that is missing is deployed
    + on_failure: rollback (the services this deploy changed go back to their previous spec) or pause

    **Example:**

    .. code:: python

        swarm.stack(name="Deploy app", stack_name="app", path="/etc/app/app.yml", text=rendered, timeout=120)
    """
    if on_failure not in STACK_FAILURE:
        raise OperationError(f"on_failure {on_failure!r}: use {' or '.join(STACK_FAILURE)}")
    deployed = stack_name in read(SwarmStacks)
    if not present:
        if deployed:
            yield f"docker stack rm {shlex.quote(stack_name)}"
        else:
            host.noop(f"stack {stack_name} is not deployed")
        return
    same = text is None or read(FileHashes, paths=[path]).get(path) == sha256_text(text)
    problems = stack_problems(read(StackServices).get(stack_name, {}), stack_name, services) if deployed else []
    if same and deployed and not force and not problems:
        host.noop(f"stack {stack_name} is up to date")
        return
    if same and deployed and problems and not force:
        logger.warning(f"{host.print_prefix}stack {stack_name}: {'; '.join(problems)}: deployed again")
    source = path if text is None else f"{path}.next"
    if text is not None:
        yield write_command(source, text)
    yield FunctionCommand(_before_deploy, (stack_name,), {})
    deploy = shlex.join(["docker", "stack", "deploy", "--with-registry-auth", "--prune", "-c", source, stack_name])
    yield retrying(deploy)  # a manager joining or leaving can make the leader step down for a moment
    yield FunctionCommand(converge, (stack_name, timeout, on_failure, source if text is not None else None), {})
    if text is not None:
        yield shlex.join(["mv", source, path])


# Joins: the token exists only at execution time, read from a manager once per run.


def connector_args(state: State, target: Host) -> dict[str, Any]:
    """The connection arguments (sudo, ...) that target's data asks for, for commands run from callbacks."""
    arguments, _ = pop_global_arguments(state, target, {})
    return {key: value for key, value in arguments.items() if key in CONNECTOR_ARGUMENT_KEYS and key != "_stdin"}


def join_body(token: str, advertise_addr: str, manager_addr: str, data_path_addr: str | None) -> str:
    """The body of Docker's POST /swarm/join: what `docker swarm join` sends."""
    return json.dumps({
        "ListenAddr": f"{advertise_addr}:{SWARM_PORT}",
        "AdvertiseAddr": advertise_addr,
        "DataPathAddr": data_path_addr or "",
        "RemoteAddrs": [f"{manager_addr}:{SWARM_PORT}"],
        "JoinToken": token,
    })  # fmt: skip


def join_result(stdout: list[str]) -> tuple[bool, str]:
    """(joined, error message) from JOIN_REQUEST's output: the response body, then the HTTP status."""
    lines = [line for line in stdout if line.strip()]
    status = lines[-1].strip() if lines else ""
    body = "\n".join(lines[:-1])
    if status == "200":
        return True, ""
    try:
        message = json.loads(body).get("message", body)
    except ValueError:
        message = body
    return False, message or f"HTTP status {status or 'unknown'}"


TRANSIENT = ("does not have a leader", "deadline exceeded", "leadership change", "lost leader status")


def transient(error: str) -> bool:
    """Errors a swarm gives while it elects a leader (or changes its managers): worth a retry."""
    return any(text in error for text in TRANSIENT)


def retrying(command: str) -> str:
    """`command` retried in the shell while it fails with a transient error (see `transient`), for commands
    that are safe to repeat; its output is printed once, on stderr when it failed for good."""
    patterns = "|".join(f'*"{text}"*' for text in TRANSIENT)
    return (
        f'n=0; until out=$({command} 2>&1); do n=$((n+1)); case "$out" in {patterns}) '
        f"if [ $n -lt {RETRIES} ]; then sleep {RETRY_DELAY:g}; continue; fi ;; esac; "
        'printf "%s\\n" "$out" >&2; exit 1; done; printf "%s\\n" "$out"'
    )


@dataclass
class _Joins:
    """What the joins of one run share: each role's token and the managers' addresses, read once."""

    lock: BoundedSemaphore = field(default_factory=BoundedSemaphore)
    info: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


_joins = PerRun(_Joins)


def join_info(state: State, role: str, managers: dict[str, str]) -> tuple[str, list[str]]:
    """(token, manager addresses to join through) for `role`, read once per run from the first manager that
    answers: every joining host shares it, so a manager never gets more concurrent SSH sessions than sshd
    allows (MaxSessions)."""
    joins = _joins(state)
    with joins.lock:
        if role not in joins.info:
            joins.info[role] = _fetch_join_info(state, role, managers)
        return joins.info[role]


def _fetch_join_info(state: State, role: str, managers: dict[str, str]) -> tuple[str, list[str]]:
    candidates = [state.inventory.get_host(name) for name in managers]

    def ask(manager: Host) -> tuple[str, list[str]]:
        for _ in range(RETRIES):
            status, output = manager.run_shell_command(
                StringCommand("docker", "swarm", "join-token", "-q", role), print_output=False,
                **connector_args(state, manager),
            )  # fmt: skip
            token = output.stdout.strip()
            if status and token:
                first = managers[manager.name]
                return token, [first, *(a for name, a in managers.items() if a != first)]
            if not transient(output.stderr):
                break
            gevent.sleep(RETRY_DELAY)
        raise LookupError(output.stderr.strip() or "no token")

    try:
        return first_answer([m for m in candidates if m not in state.failed_hosts], ask)
    except LookupError as exc:
        raise OperationError(f"no manager gave a {role} join token ({exc})") from None


@expected_failures
def _join(state: State, host: Host, role: str, advertise_addr: str, managers: dict[str, str],
          data_path_addr: str | None) -> None:  # fmt: skip
    token, addresses = join_info(state, role, managers)
    args = connector_args(state, host)
    problems = []
    for manager_addr in addresses:
        status, _ = host.run_shell_command(
            StringCommand(f"timeout 5 bash -c '</dev/tcp/{manager_addr}/{SWARM_PORT}'"), print_output=False, **args
        )
        if not status:
            problems.append(f"{manager_addr}:{SWARM_PORT} is not reachable")
            continue
        body = join_body(token, advertise_addr, manager_addr, data_path_addr)
        for _ in range(RETRIES):
            status, output = host.run_shell_command(StringCommand(JOIN_REQUEST), _stdin=body, print_output=False,
                                                    **args)  # fmt: skip
            joined, error = join_result(output.stdout_lines) if status else (False, output.stderr.strip())
            if joined or not transient(error):
                break
            gevent.sleep(RETRY_DELAY)
        if joined:
            logger.info(f"{host.print_prefix}joined the swarm as a {role} through {manager_addr}")
            return
        problems.append(f"through {manager_addr}: {error}")
    outside = [name for name in managers if not state.is_host_in_limit(state.inventory.get_host(name))]
    hint = (
        f"the firewalls of managers outside --limit ({', '.join(outside)}) don't know this host yet: run the "
        "deploy with them in the limit (or without --limit)"
        if outside
        else "if a port is not reachable, open the swarm ports between the nodes (firewalls, cloud security groups)"
    )
    raise OperationError(f"joining the swarm as a {role} failed ({'; '.join(problems)}): {hint}")


# Stacks: convergence on the services' present spec.


def progress_command(stack: str) -> str:
    """One command that prints where a stack stands: `replicas NAME R/D` per service, `service<TAB>ID<TAB>NAME
    <TAB>UPDATE-STATUS-JSON<TAB>TEMPLATE-JSON` per service and `task SERVICE-ID STATE SPEC-JSON` per task meant
    to run."""
    name = shlex.quote(stack)
    return (
        f"docker stack services {name} --format 'replicas {{{{.Name}}}} {{{{.Replicas}}}}'; "
        f'ids=$(docker stack services -q {name}); [ -z "$ids" ] || docker service inspect $ids --format '
        "'service\t{{.ID}}\t{{.Spec.Name}}\t{{json .UpdateStatus}}\t{{json .Spec.TaskTemplate}}'; "
        f"tasks=$(docker stack ps -q --filter desired-state=running {name} 2>/dev/null); "
        '[ -z "$tasks" ] || docker inspect $tasks --format '
        "'task {{.ServiceID}} {{.Status.State}} {{json .Spec}}'; true"
    )


# Task spec fields whose change makes swarm replace a task. Compared one by one: the API shows a service's
# spec with defaults filled in that its tasks' specs leave out, and swarm keeps a task whose node still meets
# changed placement constraints.
RESTART_KEYS = ("Image", "Command", "Args", "Env", "Labels", "Mounts", "Secrets", "Configs", "User", "Dir")


def _what_restarts(spec: dict[str, Any]) -> dict[str, Any]:
    container = spec.get("ContainerSpec") or {}
    return {**{key: container.get(key) for key in RESTART_KEYS}, "ForceUpdate": spec.get("ForceUpdate") or 0}


def stack_progress(output: list[str]) -> dict[str, dict[str, Any]]:
    """{service: {"running", "desired", "update", "started", "current", "stale"}} from `progress_command`'s output
    (`started`: when its last update started).
    `current`: tasks running the service's present spec; `stale`: tasks meant to run an older spec (after
    `docker stack deploy` the old tasks keep running until the update starts, with no update status yet)."""
    services: dict[str, dict[str, Any]] = {}
    templates: dict[str, tuple[str, Any]] = {}
    tasks: list[tuple[str, str, Any]] = []
    for line in output:
        kind, _, rest = line.strip().partition(" ")
        if kind == "replicas":
            service, _, replicas = rest.partition(" ")
            for name, (running, desired) in parse_replicas([f"{service} {replicas}"]).items():
                services[name] = {"running": running, "desired": desired, "update": "none", "current": 0, "stale": 0}
        elif line.startswith("service\t"):
            _, service_id, name, status, template = line.strip().split("\t", 4)
            templates[service_id] = (name, json.loads(template))
            update = json.loads(status) or {}
            services.setdefault(name, {"running": 0, "desired": 0, "update": "none", "current": 0, "stale": 0})
            services[name]["update"] = update.get("State") or "none"
            services[name]["started"] = update.get("StartedAt")
        elif kind == "task":
            service_id, task_state, spec = rest.split(" ", 2)
            tasks.append((service_id, task_state, json.loads(spec)))
    for service_id, task_state, spec in tasks:
        if service_id not in templates:
            continue
        name, template = templates[service_id]
        if _what_restarts(spec) != _what_restarts(template):
            services[name]["stale"] += 1
        elif task_state == "running":
            services[name]["current"] += 1
    return services


def converged(services: dict[str, dict[str, Any]]) -> bool:
    """Every service runs its desired replicas, all of its present spec, and no update is under way."""
    return bool(services) and all(
        s["update"] in ("none", "completed") and not s["stale"] and s["current"] == s["desired"]
        for s in services.values()
    )


@dataclass
class _Deploys:
    """What a stack's deploy keeps for its convergence: each service's spec and update start before it."""

    before: dict[tuple[str, str], dict[str, tuple[str, Any]]] = field(default_factory=dict)


_deploys = PerRun(_Deploys)


def _specs(state: State, host: Host, stack: str) -> dict[str, tuple[str, Any]]:
    """{service: (its spec as JSON, when its last update started)} of a stack now."""
    name = shlex.quote(stack)
    command = (
        f'ids=$(docker stack services -q {name}); [ -z "$ids" ] || docker service inspect $ids --format '
        "'{{.Spec.Name}}\t{{json .UpdateStatus}}\t{{json .Spec}}'"
    )
    status, output = host.run_shell_command(StringCommand(command), print_output=False, **connector_args(state, host))
    if not status:
        raise OperationError(f"stack {stack}: reading its services failed: {output.stderr.strip()}")
    specs = {}
    for line in output.stdout_lines:
        service, update, spec = line.strip().split("\t", 2)
        specs[service] = (spec, (json.loads(update) or {}).get("StartedAt"))
    return specs


@expected_failures
def _before_deploy(state: State, host: Host, stack: str) -> None:
    _deploys(state).before[host.name, stack] = _specs(state, host, stack)


@expected_failures
def converge(state: State, host: Host, stack: str, timeout: int, on_failure: str, staged: str | None) -> None:
    """Poll until every service of the stack runs its desired replicas of its present spec and no rolling
    update is under way, seen twice in a row; fail with the tasks' errors after `timeout` seconds, or at once
    when an update that this deploy started paused or rolled back, having rolled back (`on_failure`) the
    services this deploy changed, and removed the staged file."""
    before = _deploys(state).before.get((host.name, stack), {})
    try:
        _wait_converged(state, host, stack, timeout, before)
    except OperationError as error:
        message = str(error)
        if on_failure == "rollback":
            message += "; " + _roll_back(state, host, stack, timeout, before)
        else:
            message += "; left as Docker paused it (on_failure: pause)"
        if staged:
            host.run_shell_command(StringCommand("rm", "-f", staged), print_output=False, **connector_args(state, host))
        raise OperationError(message) from None


def _wait_converged(state: State, host: Host, stack: str, timeout: int, before: dict[str, tuple[str, Any]]) -> None:
    args = connector_args(state, host)
    command = StringCommand(progress_command(stack))
    deadline = time.monotonic() + timeout
    last_report = 0.0
    steady = False
    while True:
        status, output = host.run_shell_command(command, print_output=False, **args)
        services = stack_progress(output.stdout_lines) if status else {}
        for name, service in services.items():  # an update status from before this deploy is not this one's
            if name in before and service.get("started") == before[name][1]:
                service["update"] = "none"
        stuck = {n: s["update"] for n, s in services.items() if s["update"] in STUCK}
        if stuck:
            _fail(host, args, stack, f"stack {stack}: update {', '.join(f'{n} {u}' for n, u in stuck.items())}")
        if converged(services):
            if steady:  # converged on two polls in a row, as `docker service update` verifies
                logger.info(f"{host.print_prefix}stack {stack}: every service converged")
                return
            steady = True
        else:
            steady = False
        now = time.monotonic()
        if now > deadline:
            _fail(host, args, stack, f"stack {stack} did not converge within {timeout} s")
        if now - last_report >= 5:
            progress = ", ".join(
                f"{n} {s['current']}/{s['desired']}" + (f" ({s['stale']} old)" if s["stale"] else "")
                + (" updating" if s["update"] not in ("none", "completed") else "")
                for n, s in sorted(services.items())
            )  # fmt: skip
            logger.info(f"{host.print_prefix}stack {stack}: waiting ({progress or 'no services yet'})")
            last_report = now
        gevent.sleep(POLL)


def _roll_back(state: State, host: Host, stack: str, timeout: int, before: dict[str, tuple[str, Any]]) -> str:
    """Roll the services whose spec this deploy changed back to the spec they had (`docker service rollback`),
    and wait for it; what was done, in words."""
    args = connector_args(state, host)
    now = _specs(state, host, stack)
    changed = sorted(name for name, (spec, _) in now.items() if name in before and spec != before[name][0])
    new = sorted(name for name in now if name not in before)
    left = f"; new service(s) left as they are: {', '.join(new)}" if new else ""
    if not changed:
        return "nothing to roll back" + left
    for name in changed:
        rollback = StringCommand("docker", "service", "rollback", "-d", name, ">/dev/null")
        status, output = host.run_shell_command(rollback, print_output=False, **args)
        if not status:
            return f"rolling {name} back failed: {output.stderr.strip()}" + left
    deadline = time.monotonic() + max(timeout, ROLLBACK_WAIT)
    while True:
        states = {name: _update_state(state, host, name) for name in changed}
        unfinished = [name for name, value in states.items() if value != "rollback_completed"]
        if not unfinished or time.monotonic() > deadline or "rollback_paused" in states.values():
            break
        gevent.sleep(POLL)
    if unfinished:
        return (
            f"rolling back {', '.join(unfinished)} did not finish ({', '.join(states[n] for n in unfinished)})" + left
        )
    return f"rolled back to the spec before this deploy: {', '.join(changed)} (on_failure: rollback)" + left


def _update_state(state: State, host: Host, service: str) -> str:
    status, output = host.run_shell_command(
        StringCommand("docker", "service", "inspect", service, "--format",
                      "'{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}'"),
        print_output=False, **connector_args(state, host),
    )  # fmt: skip
    return output.stdout.strip() if status else ""


def _fail(host: Host, args: dict[str, Any], stack: str, reason: str) -> None:
    _, tasks = host.run_shell_command(
        StringCommand(f"docker stack ps {shlex.quote(stack)} --no-trunc --format "
                      "'{{.Name}} on {{.Node}}: {{.CurrentState}}: {{.Error}}'"),
        print_output=False, **args,
    )  # fmt: skip
    errors = [line for line in tasks.stdout_lines if not line.rstrip().endswith(":")][:5]
    raise OperationError(f"{reason}; failing tasks: " + ("; ".join(errors) or "none reported"))
