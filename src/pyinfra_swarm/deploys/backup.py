"""Backup of the swarm's state to the controller (`backup.py`) and its restore on a fresh manager when every
manager is lost (`restore.py`), following Docker's documented procedure."""

from __future__ import annotations

import datetime
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import Host
from pyinfra.api.exceptions import DeployError

from pyinfra_swarm.deploys.daemon import configure_daemon
from pyinfra_swarm.deploys.firewall import configure_firewall
from pyinfra_swarm.deploys.install import install_docker
from pyinfra_swarm.deploys.step import step
from pyinfra_swarm.operations import backup, private
from pyinfra_swarm.plan import ClusterPlan
from pyinfra_swarm.settings import backup_dir, is_manager, setting, unlock_key_file

REMOTE_BACKUP = "/var/tmp/pyinfra-swarm-backup.tar.gz"
REMOTE_RESTORE = "/var/tmp/pyinfra-swarm-restore.tar.gz"


def backup_host(plan: ClusterPlan) -> Host:
    """The manager to back up from: one in the swarm and in --limit, not the leader when there is another
    (its engine stops meanwhile)."""
    candidates = [h for h in plan.managers if h in plan.in_limit and plan.in_this_swarm(h)]
    if not candidates:
        raise DeployError("no manager to back up from: none reached, in --limit and in the swarm")
    followers = [h for h in candidates if not (plan.node_of(h) or {}).get("leader")]
    return (followers or candidates)[0]


@step("Back up the swarm", runs_on="every host", build=False)
def backup_swarm(plan: ClusterPlan, this: Host) -> None:
    """Archive the swarm state of one manager (Docker stopped meanwhile) and fetch it to the controller as
    `swarm-<cluster>-<host>-<UTC time>.tar.gz` in the backup directory (0700)."""
    if this is not backup_host(plan):
        return
    info = plan.swarm_of(this)
    managers = [n for n in plan.nodes if n["role"] == "manager"]
    if len(managers) == 1:
        logger.warning(f"one manager: Docker stops on {this.name} while its state is archived; the swarm can't be "
                       "changed meanwhile and the tasks there restart")  # fmt: skip
    if info.autolocked:
        logger.warning(f"autolock is on: restoring this backup needs today's unlock key ({unlock_key_file(this)}): "
                       "keep a copy of it apart from the backup")  # fmt: skip
    folder = backup_dir(this)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    cluster = (info.cluster_id or "unknown")[:12]
    dest = folder / f"swarm-{cluster}-{plan.hostnames[this]}-{stamp}.tar.gz"
    logger.info(f"the backup goes to {dest}")
    backup.archived(name=f"Archive the swarm state on {this.name} (Docker stopped meanwhile)", archive=REMOTE_BACKUP,
                    key_file=unlock_key_file(this))  # fmt: skip
    backup.fetched(name=f"Fetch the backup to {dest} (and remove it from the node)", archive=REMOTE_BACKUP,
                   dest=str(dest))  # fmt: skip


@step("Restore the swarm", runs_on="every host", build=False)
def restore_swarm(plan: ClusterPlan, this: Host) -> None:
    """On the manager with `swarm_restore_from`: Docker installed as the deploy does, the backup uploaded and
    restored with `--force-new-cluster`. Refused while a manager of the inventory is in the swarm (that
    would make two swarms); a no-op once this host is in a swarm."""
    source = setting(this, "swarm_restore_from")
    if not source:
        return
    if not is_manager(this):
        raise DeployError(f"host {this.name}: swarm_restore_from is set on a worker: restore on a manager")
    if not Path(source).is_file():
        raise DeployError(f"host {this.name}: swarm_restore_from {source} doesn't exist")
    if plan.primary is not None and plan.primary is not this:
        raise DeployError(
            f"{plan.primary.name} is a manager of the swarm: restoring a backup beside a live swarm would make two. "
            "Restore only when every manager is lost; otherwise the deploy rejoins the lost ones"
        )
    if plan.swarm_of(this).joined:
        host.noop("this host is in a swarm: nothing to restore (remove swarm_restore_from)")
        return
    configure_daemon(plan=plan)
    install_docker(plan=plan)
    configure_firewall(plan=plan)
    private.file(name="Upload the backup", path=REMOTE_RESTORE, content=Path(source).read_bytes())
    backup.restored(name="Restore the swarm state here (--force-new-cluster)", archive=REMOTE_RESTORE,
                    advertise_addr=plan.addresses[this], key_file=unlock_key_file(this))  # fmt: skip
