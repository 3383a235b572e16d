"""Restore the swarm from a backup when every manager is lost: `pyinfra INVENTORY restore.py` (see README.md,
*Backup and restore*).

Set `swarm_restore_from` to the backup file in the host data of one (fresh) manager. That host gets Docker as the
deploy installs it and the backup's state, brought up with `docker swarm init --force-new-cluster`; then run
`deploy.py`, which rejoins the other hosts.
"""

from pyinfra_swarm.deploys.backup import restore_swarm
from pyinfra_swarm.plan import plan_cluster

restore_swarm(plan_cluster(build=False))
