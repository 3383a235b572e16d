"""The swarm's credentials (on a manager): join tokens and root CA rotated on request, autolock with the unlock
key kept in a file on the controller, a locked manager unlocked from that file. Keys and tokens never reach
output: commands that print them send their output to /dev/null or are read by a callback that doesn't print.

.. code:: python

    from pyinfra_swarm.operations import credentials

    credentials.rotate(name="New worker token", what="worker_token", request="2026-11")
    credentials.autolock(name="Autolock", enabled=True, key_file="/secure/swarm-unlock-key")
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import Host, State, StringCommand, operation
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import OperationError

from pyinfra_swarm.facts import DockerSwarm, LocalSwarm, SwarmObjects, docker_post, read
from pyinfra_swarm.operations.callbacks import expected_failures
from pyinfra_swarm.operations.swarm import connector_args

ROTATIONS = {
    "worker_token": "docker swarm join-token --rotate -q worker >/dev/null",
    "manager_token": "docker swarm join-token --rotate -q manager >/dev/null",
    # Waits until every node has a certificate from the new CA (a node that is down holds it up: timeout).
    "ca": "timeout 600 docker swarm ca --rotate -q >/dev/null",
    "unlock_key": None,  # a callback: the new key goes to the key file
    "registry_cert": None,  # made on the controller by the registry step; only recorded here
}
UNLOCK_REQUEST = docker_post("/swarm/unlock")


def rotation_marker(what: str, request: str) -> str:
    """The swarm config that records a rotation done for a request (configs are cluster-wide and stay)."""
    return f"pyinfra-swarm.rotated.{what}.{hashlib.sha256(request.encode()).hexdigest()[:12]}"


def save_key(path: Path, key: str) -> None:
    """Write the unlock key to the controller, readable by its owner only (0600); a directory made for it is
    0700; an existing key is kept beside it as PATH.previous (a manager that was off during a rotation still
    needs the old key)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_file() and path.read_text().strip() != key:
        os.replace(path, path.with_name(path.name + ".previous"))
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    path.chmod(0o600)


@expected_failures
def _fetch_key(state: State, host: Host, key_file: str, command: str) -> None:
    """Run `command` (which prints the unlock key and nothing else) without printing, and keep its output."""
    status, output = host.run_shell_command(StringCommand(command), print_output=False, **connector_args(state, host))
    key = output.stdout.strip()
    if not status or not key.startswith("SWMKEY-"):
        raise OperationError(f"reading the swarm's unlock key failed: {output.stderr.strip() or 'no key printed'}")
    save_key(Path(key_file), key)
    logger.info(f"{host.print_prefix}the swarm's unlock key is in {key_file} (0600)")


@operation()
def rotate(what: str, request: str, key_file: str | None = None):
    """Rotate one of the swarm's credentials once per request: `worker_token`, `manager_token`, `ca` (the
    swarm's root CA: every node gets a new certificate), `unlock_key` (written to `key_file`) or
    `registry_cert` (only recorded: the registry step renews it). A swarm
    config named after the request records that it was done, so the same request is a no-op afterwards.

    + what: worker_token, manager_token, ca or unlock_key
    + request: any text naming this rotation (a date, a ticket): a new text rotates again
    + key_file: where the new unlock key goes (unlock_key only)

    **Example:**

    .. code:: python

        credentials.rotate(name="Rotate the CA", what="ca", request="2026-Q4")
    """
    if what not in ROTATIONS:
        raise OperationError(f"can't rotate {what!r}: use one of {', '.join(ROTATIONS)}")
    marker = rotation_marker(what, request)
    if marker in read(SwarmObjects)["config"]:
        host.noop(f"{what} was rotated for request {request!r}")
        return
    if what == "registry_cert":
        pass  # the registry step made the new certificate (on the controller) and rolls the registry to it
    elif what == "unlock_key":
        if not key_file:
            raise OperationError("rotating the unlock key needs a key file to write the new key to")
        yield FunctionCommand(_fetch_key, (key_file, "docker swarm unlock-key --rotate -q"), {})
    else:
        yield str(ROTATIONS[what])
    label = shlex.quote(f"request={request}")
    yield StringCommand(
        "docker", "config", "create", "--label", label, marker, "-", _stdin=f"{what} rotated: {request}"
    )


@operation()
def autolock(enabled: bool, key_file: str):
    """Turn the swarm's autolock on or off. On: the unlock key is written to `key_file` on the controller
    (also when autolock was already on but the file is missing), never printed.

    + enabled: whether managers lock their raft keys at rest (a restarted manager needs the key)
    + key_file: where the unlock key goes on the controller

    **Example:**

    .. code:: python

        credentials.autolock(name="Autolock", enabled=True, key_file="/secure/swarm-unlock-key")
    """
    current = LocalSwarm.of(read(DockerSwarm)).autolocked
    if current == enabled and (not enabled or Path(key_file).is_file()):
        host.noop(f"autolock is {'on' if enabled else 'off'}")
        return
    if current != enabled:
        yield f"docker swarm update --autolock={'true' if enabled else 'false'} >/dev/null"
    if enabled:
        yield FunctionCommand(_fetch_key, (key_file, "docker swarm unlock-key -q"), {})


def unlock_locked(state: State, host: Host, key_file: str) -> None:
    """Unlock this host's Docker with the key in `key_file` (or its .previous) if it is locked now."""
    args = connector_args(state, host)
    status, output = host.run_shell_command(
        StringCommand("docker info --format '{{.Swarm.LocalNodeState}}'"), print_output=False, **args
    )
    if status and output.stdout.strip() != "locked":
        return
    path = Path(key_file)
    if not path.is_file():
        raise OperationError(
            f"this manager is locked and the unlock key file {key_file} doesn't exist: put the key there (from "
            "`docker swarm unlock-key -q` on an unlocked manager, or where you stored it) and run again, or run "
            "`docker swarm unlock` on the node"
        )
    keys = [p.read_text().strip() for p in (path, path.with_name(path.name + ".previous")) if p.is_file()]
    errors = []
    for key in keys:
        status, output = host.run_shell_command(StringCommand(UNLOCK_REQUEST), _stdin=json.dumps({"UnlockKey": key}),
                                                print_output=False, **args)  # fmt: skip
        if status and output.stdout_lines and output.stdout_lines[-1].strip() == "200":
            logger.info(f"{host.print_prefix}unlocked with the key in {key_file}")
            return
        errors.append(" ".join(output.stdout_lines[:-1]) or output.stderr.strip())
    raise OperationError(f"unlocking with the key in {key_file} failed: {'; '.join(errors) or 'no key'}")


@expected_failures
def unlock_now(state: State, host: Host, key_file: str) -> None:
    """Callback: `unlock_locked`, a failure being the operation's on that host."""
    unlock_locked(state, host, key_file)


@operation()
def unlock(key_file: str):
    """Unlock this manager (locked by autolock after Docker restarted) with the key in `key_file` on the
    controller (or the one kept from before the last rotation), sent to Docker's API on stdin.

    + key_file: the unlock key's file on the controller

    **Example:**

    .. code:: python

        credentials.unlock(name="Unlock", key_file="/secure/swarm-unlock-key")
    """
    if not LocalSwarm.of(read(DockerSwarm)).locked:
        host.noop("this node is not locked")
        return
    yield FunctionCommand(unlock_now, (key_file,), {})
