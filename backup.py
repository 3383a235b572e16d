"""Back up the swarm's state: `pyinfra INVENTORY backup.py` (see README.md, *Backup and restore*).

On one manager (not the leader when there are several) Docker stops while `/var/lib/docker/swarm` is archived,
then starts again; the archive is fetched to the backup directory on this machine with a timestamp.
"""

from pyinfra_swarm.deploys.backup import backup_swarm
from pyinfra_swarm.plan import plan_cluster

backup_swarm(plan_cluster(build=False))
