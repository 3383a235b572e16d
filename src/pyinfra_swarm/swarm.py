"""Swarm membership: init the first manager, join the others with tokens read at execution time from a live
manager (masked everywhere), and keep node roles, labels and availability as the inventory and data say."""

from __future__ import annotations

import json
import shlex
import weakref
from typing import Any

import gevent
from gevent.lock import BoundedSemaphore
from pyinfra import host, logger
from pyinfra.api import Host, State, StringCommand, deploy, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.operations import server

from pyinfra_swarm.cluster import Cluster, cluster, current_host
from pyinfra_swarm.settings import DEFAULTS, is_manager

SWARM_PORT = 2377
MANAGED_LABELS = "pyinfra-swarm.managed-labels"  # node label listing the labels this deploy set
SETTINGS = ["swarm_advertise_addr", "swarm_default_addr_pool", "swarm_default_addr_pool_mask_length",
            "swarm_data_path_port", "swarm_availability", "swarm_labels", "swarm_force_rejoin", "swarm_bootstrap",
            "swarm_data_path_addr"]  # fmt: skip

_JOIN_INFO: weakref.WeakKeyDictionary[State, dict[str, tuple[str, list[str]]]] = weakref.WeakKeyDictionary()
_JOIN_LOCK = BoundedSemaphore()
RETRIES = 15  # transient errors (leader election) are retried for RETRIES * RETRY_DELAY seconds
RETRY_DELAY = 2.0


@operation(is_idempotent=False)
def init(
    advertise_addr: str,
    default_addr_pool: list[str] | None = None,
    default_addr_pool_mask_length: int | None = None,
    data_path_port: int | None = None,
    availability: str | None = None,
    data_path_addr: str | None = None,
):
    """Initialise a new swarm on this host (a manager), listening and advertising on one address."""
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
    yield StringCommand(*args)


@operation(is_idempotent=False)
def join(role: str, advertise_addr: str, data_path_addr: str | None = None):
    """Join this host to the swarm as `role`, with a token read from a live manager when this runs. The
    token goes to Docker's API on stdin, never on a command line (sudo's log, `ps`, auditd)."""
    yield FunctionCommand(_join, (role, advertise_addr, data_path_addr), {})


@operation()
def barrier():
    """Runs nothing. Every host plans it at the same place, so pyinfra runs what comes after it on any host
    (joins) only once every host has run what comes before it (its firewall): pyinfra orders operations
    across hosts by how many each host has before them, so a host with nothing else to do would otherwise
    join before its manager's firewall lets it in."""
    yield from ()


@operation(is_idempotent=False)
def leave():
    """Leave whatever swarm this host is in (used before joining this one, with swarm_force_rejoin)."""
    yield "docker swarm leave --force"


def connector_args(state: State, target: Host) -> dict[str, Any]:
    """The connection arguments (sudo, ...) that target's data asks for, for commands run from callbacks."""
    arguments, _ = pop_global_arguments(state, target, {})
    return {key: value for key, value in arguments.items() if key in CONNECTOR_ARGUMENT_KEYS and key != "_stdin"}


def join_info(state: State, role: str) -> tuple[str, list[str]]:
    """(token, manager addresses to join through) for `role`, read once per run from the first manager that
    answers: every joining host shares it, so a manager never gets more concurrent SSH sessions than sshd
    allows (MaxSessions)."""
    with _JOIN_LOCK:
        cache = _JOIN_INFO.setdefault(state, {})
        if role not in cache:
            cache[role] = _fetch_join_info(state, cluster(state), role)
        return cache[role]


def _fetch_join_info(state: State, view: Cluster, role: str) -> tuple[str, list[str]]:
    acting = view.acting_manager
    candidates = [h for h in [acting, *view.managers] if h in view.reachable and h not in state.failed_hosts]
    candidates = list(dict.fromkeys(candidates))
    problems = []
    for manager in candidates:
        for _ in range(RETRIES):
            status, output = manager.run_shell_command(
                StringCommand("docker", "swarm", "join-token", "-q", role), print_output=False,
                **connector_args(state, manager),
            )  # fmt: skip
            token = output.stdout.strip()
            if status and token:
                in_swarm = [m for m in candidates if m is manager or view.in_this_swarm(m)]
                return token, [view.addresses[m] for m in in_swarm]
            if not _transient(output.stderr):
                break
            gevent.sleep(RETRY_DELAY)
        problems.append(f"{manager.name}: {output.stderr.strip() or 'no token'}")
    raise OperationError(f"no manager gave a {role} join token ({'; '.join(problems) or 'none reachable'})")


def _transient(error: str) -> bool:
    """Errors a swarm gives while it elects a leader: worth a retry."""
    return any(text in error for text in ("does not have a leader", "deadline exceeded", "leadership change"))


# `docker swarm join` takes the token only as an argument; Docker's API takes it in the request body.
JOIN_REQUEST = (
    "curl -sS --unix-socket /var/run/docker.sock -H 'Content-Type: application/json' --data-binary @- "
    "-w '\\n%{http_code}' http://localhost/swarm/join"
)


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


def _join(state: State, host: Host, role: str, advertise_addr: str, data_path_addr: str | None) -> None:
    token, managers = join_info(state, role)
    args = connector_args(state, host)
    problems = []
    for manager_addr in managers:
        status, _ = host.run_shell_command(
            StringCommand(f"timeout 5 bash -c '</dev/tcp/{manager_addr}/{SWARM_PORT}'"), print_output=False, **args
        )
        if not status:
            problems.append(f"{manager_addr}:{SWARM_PORT} is not reachable")
            continue
        body = join_body(token, advertise_addr, manager_addr, data_path_addr)
        for _ in range(RETRIES):
            status, output = host.run_shell_command(
                StringCommand(JOIN_REQUEST), _stdin=body, print_output=False, **args
            )
            joined, error = join_result(output.stdout_lines) if status else (False, output.stderr.strip())
            if joined or not _transient(error):
                break
            gevent.sleep(RETRY_DELAY)
        if joined:
            logger.info(f"{host.print_prefix}joined the swarm as a {role} through {manager_addr}")
            return
        problems.append(f"through {manager_addr}: {error}")
    outside = [m.name for m in cluster(state).managers if not state.is_host_in_limit(m)]
    hint = (
        f"the firewalls of managers outside --limit ({', '.join(outside)}) don't know this host yet: run the "
        "deploy with them in the limit (or without --limit)"
        if outside
        else "if a port is not reachable, open the swarm ports between the nodes (firewalls, cloud security groups)"
    )
    raise OperationError(f"joining the swarm as a {role} failed ({'; '.join(problems)}): {hint}")


STOPPED = {
    "foreign": "is in a different swarm (node {node}, managers {managers}): stopped here. Set swarm_force_rejoin: "
    "true for it to leave that swarm and join this one",
    "locked": "is locked (autolock, after a restart of Docker): stopped here; it is never made to leave. Unlock it "
    "with `docker swarm unlock` and the swarm's unlock key (`docker swarm unlock-key` on an unlocked manager)",
    "pending": "is still joining a swarm (state pending, managers {managers}): stopped here. Wait for the join to "
    "finish or fail, or set swarm_force_rejoin: true for it to give up and join again",
}


@deploy("Join the swarm", data_defaults={key: DEFAULTS[key] for key in SETTINGS})
def join_swarm() -> None:
    """Init the swarm on the first free manager, or join this host to it with the role the inventory gives.
    A host already in this swarm (same cluster, by node ID) is left alone; one in another swarm, locked or
    pending is stopped with the reason, unless `swarm_force_rejoin` lets it leave another swarm first."""
    view = cluster(host.state)
    this = current_host()
    step = view.plan[this]
    address = view.addresses[this]
    data_path_addr = host.data.swarm_data_path_addr
    barrier(name="Every host's firewall is in place")
    if step == "member":
        host.noop("already in this swarm")
    elif step == "init":
        init(
            name="Initialise the swarm",
            advertise_addr=address,
            default_addr_pool=host.data.swarm_default_addr_pool,
            default_addr_pool_mask_length=host.data.swarm_default_addr_pool_mask_length,
            data_path_port=host.data.swarm_data_path_port,
            availability=host.data.swarm_availability,
            data_path_addr=data_path_addr,
        )
    elif step in STOPPED:
        info = view.swarm[this] or {}
        managers = ", ".join(m.get("Addr", "?") for m in info.get("RemoteManagers") or []) or "unknown"
        logger.error(f"{host.print_prefix}{STOPPED[step].format(node=info.get('NodeID'), managers=managers)}")
        host.state.fail_hosts({this})
    else:
        if step == "rejoin":
            leave(name="Leave the other swarm (swarm_force_rejoin)")
        role = "manager" if is_manager(this) else "worker"
        join(name=f"Join the swarm as a {role}", role=role, advertise_addr=address, data_path_addr=data_path_addr)


def node_commands(view: Cluster) -> list[str]:
    """docker node commands (run on the acting manager) that remove stale entries of rejoining hosts and
    bring every reachable node's role, labels and availability to what the inventory and data say."""
    removals: list[str] = []
    roles: list[str] = []
    updates: list[str] = []
    for target in view.reachable:
        step = view.plan.get(target)
        if step in STOPPED or target not in view.in_limit:
            continue
        hostname = view.hostnames[target]
        entry = view.node_of(target)
        if entry is None:
            # The host is not in this swarm now, so an entry with its (unique) hostname is its past self.
            for stale in view.nodes:
                if stale["hostname"] == hostname:
                    if stale["role"] == "manager":
                        removals.append(f"docker node demote {stale['id']}")
                    removals.append(f"docker node rm --force {stale['id']}")
        node = entry["id"] if entry else hostname
        wanted_role = "manager" if is_manager(target) else "worker"
        if entry and entry["role"] != wanted_role:
            roles.append(f"docker node {'promote' if wanted_role == 'manager' else 'demote'} {node}")
        update = _update_args(entry, target)
        if update:
            updates.append(shlex.join(["docker", "node", "update", *update, node]))
    return removals + roles + updates


def _update_args(entry: dict[str, Any] | None, target: Host) -> list[str]:
    current = entry["labels"] if entry else {}
    wanted = {key: _label_value(value) for key, value in (target.data.get("swarm_labels") or {}).items()}
    managed = [key for key in current.get(MANAGED_LABELS, "").split(",") if key]
    args: list[str] = []
    for key, value in sorted(wanted.items()):
        if current.get(key) != value:
            args += ["--label-add", f"{key}={value}"]
    for key in managed:
        if key not in wanted and key in current:
            args += ["--label-rm", key]
    marker = ",".join(sorted(wanted))
    if current.get(MANAGED_LABELS, "") != marker:
        args += ["--label-add", f"{MANAGED_LABELS}={marker}"] if marker else ["--label-rm", MANAGED_LABELS]
    availability = target.data.get("swarm_availability") or DEFAULTS["swarm_availability"]
    if availability != (entry["availability"] if entry else "active"):
        args += ["--availability", availability]
    return args


def _label_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@deploy("Swarm node roles, labels and availability")
def configure_nodes() -> None:
    """On the manager acting for the cluster: promote/demote, label and set availability of every node."""
    view = cluster(host.state)
    if current_host() is not view.acting_manager:
        return
    commands = node_commands(view)
    if commands:
        server.shell(name="Swarm nodes: roles, labels, availability", commands=commands)
    else:
        host.noop("swarm nodes already have their roles, labels and availability")
