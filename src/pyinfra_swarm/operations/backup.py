"""Backup and restore of a manager's swarm state (`/var/lib/docker/swarm`: raft log, keys, certificates), as
Docker documents it: archived with Docker stopped, restored on a manager with `--force-new-cluster`.

.. code:: python

    from pyinfra_swarm.operations import backup

    backup.archived(name="Back up the swarm", archive="/var/tmp/swarm.tar.gz", key_file="/secure/unlock-key")
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex

from pyinfra import host, logger
from pyinfra.api import Host, State, StringCommand, operation
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import OperationError

from pyinfra_swarm.facts import DockerSwarm, LocalSwarm, read
from pyinfra_swarm.operations.callbacks import expected_failures
from pyinfra_swarm.operations.credentials import unlock_now
from pyinfra_swarm.operations.swarm import LOCK_CONFIG, connector_args, force_new_cluster_command

STATE = "/var/lib/docker/swarm"
BACK_WAIT = 180  # seconds for a manager to be back in the swarm, with a leader, after Docker started again


def _with_docker_stopped(command: str) -> str:
    """`command` run while Docker is stopped; Docker is started again whatever it did, and its status kept."""
    return (
        f"systemctl stop docker.socket docker.service && ({command}); status=$?; "
        "systemctl start docker.service; exit $status"
    )


BACK_IN_THE_SWARM = (
    f"for i in $(seq {BACK_WAIT // 2}); do "
    "[ \"$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)\" = active ] && "
    "docker node ls >/dev/null 2>&1 && exit 0; sleep 2; done; "
    f"echo 'this manager is not back in the swarm with a leader after {BACK_WAIT} s' >&2; exit 1"
)


@operation()
def archived(archive: str, key_file: str):
    """Archive this manager's swarm state to `archive` (on this host, 0600), with Docker stopped meanwhile,
    then wait until the manager is back in the swarm (unlocked from `key_file` if autolock is on).

    + archive: the tar.gz to write on this host
    + key_file: the swarm's unlock key on the controller (used only when autolock locks the restarted manager)

    **Example:**

    .. code:: python

        backup.archived(name="Back up", archive="/var/tmp/swarm.tar.gz", key_file="/secure/unlock-key")
    """
    target = shlex.quote(archive)
    yield _with_docker_stopped(
        f"umask 077 && tar -czf {target} -C /var/lib/docker swarm || {{ rm -f {target}; false; }}"
    )
    yield FunctionCommand(unlock_now, (key_file,), {})
    yield BACK_IN_THE_SWARM


@operation(is_idempotent=False)
def fetched(archive: str, dest: str):
    """Fetch `archive` from this host to `dest` on the controller (0600 from its first byte), then remove it
    from the host, whether the fetch worked or not. It comes on the command's output (base64), not through
    pyinfra's download, which a sudo user stages in /tmp readable by others.

    + archive: the file on this host (removed afterwards)
    + dest: where it goes on the controller (it must not exist)

    **Example:**

    .. code:: python

        backup.fetched(name="Fetch the backup", archive="/var/tmp/swarm.tar.gz", dest="backups/swarm.tar.gz")
    """
    yield FunctionCommand(_fetch, (archive, dest), {})


@expected_failures
def _fetch(state: State, host: Host, archive: str, dest: str) -> None:
    args = connector_args(state, host)
    source = shlex.quote(archive)
    try:
        status, output = host.run_shell_command(
            StringCommand(f"sha256sum < {source} | cut -d' ' -f1 && base64 < {source}"), print_output=False, **args
        )
        if not status or not output.stdout_lines:
            raise OperationError(f"fetching {archive} failed: {output.stderr.strip() or 'no output'}")
        digest, *encoded = output.stdout_lines
        data = base64.b64decode("".join(encoded))
        if hashlib.sha256(data).hexdigest() != digest.strip():
            raise OperationError(f"fetching {archive} failed: what arrived differs from the file (sha256)")
        descriptor = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
    finally:
        host.run_shell_command(StringCommand("rm", "-f", archive), print_output=False, **args)
    logger.info(f"{host.print_prefix}the backup is in {dest} (0600, {len(data)} bytes)")


@operation()
def restored(archive: str, advertise_addr: str, key_file: str):
    """On a manager that is in no swarm: the swarm state in `archive` (a file on this host, removed afterwards)
    replaces Docker's, and `docker swarm init --force-new-cluster` brings that swarm back with this host as its
    only manager: services, secrets, configs, networks and the worker nodes of the backup. The workers reconnect
    when this host has the backed-up manager's address; other managers join again through the deploy.

    + archive: the backup on this host
    + advertise_addr: this host's address
    + key_file: the unlock key of the backup's time, on the controller (when autolock was on)

    **Example:**

    .. code:: python

        backup.restored(name="Restore", archive="/var/tmp/swarm.tar.gz", advertise_addr="10.0.0.10",
                        key_file="/secure/unlock-key")
    """
    local = LocalSwarm.of(read(DockerSwarm))
    if local.joined:
        host.noop(f"this host is in a swarm ({local.state}): nothing restored")
        return
    target = shlex.quote(archive)
    # The archive goes whatever happens: it holds the swarm's keys.
    yield _with_docker_stopped(
        f"(rm -rf {STATE} && tar -xzf {target} -C /var/lib/docker); s=$?; rm -f {target}; exit $s"
    )
    yield FunctionCommand(unlock_now, (key_file,), {})
    yield force_new_cluster_command(advertise_addr)
    yield BACK_IN_THE_SWARM
    # The backup was taken under its run's cluster lock, which came back with it: that run is over.
    yield f"docker config rm {LOCK_CONFIG} >/dev/null 2>&1 || true"
