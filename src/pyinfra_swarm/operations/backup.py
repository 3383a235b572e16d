"""Backup and restore of a manager's swarm state (`/var/lib/docker/swarm`: raft log, keys, certificates), as
Docker documents it: archived with Docker stopped, restored on a manager with `--force-new-cluster`.

.. code:: python

    from pyinfra_swarm.operations import backup

    backup.archived(name="Back up the swarm", archive="/var/tmp/swarm.tar.gz", key_file="/secure/unlock-key")
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.command import FunctionCommand

from pyinfra_swarm.facts import DockerSwarm, read
from pyinfra_swarm.operations.credentials import unlock_now
from pyinfra_swarm.operations.swarm import force_new_cluster_command

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
    yield _with_docker_stopped(f"umask 077 && tar -czf {target} -C /var/lib/docker swarm")
    yield FunctionCommand(unlock_now, (key_file,), {})
    yield BACK_IN_THE_SWARM


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
    state = (read(DockerSwarm) or {}).get("LocalNodeState")
    if state in ("active", "pending", "locked"):
        host.noop(f"this host is in a swarm ({state}): nothing restored")
        return
    target = shlex.quote(archive)
    yield _with_docker_stopped(f"rm -rf {STATE} && tar -xzf {target} -C /var/lib/docker && rm -f {target}")
    yield FunctionCommand(unlock_now, (key_file,), {})
    yield force_new_cluster_command(advertise_addr)
    yield BACK_IN_THE_SWARM
