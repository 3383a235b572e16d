"""Tear the swarm down: `pyinfra INVENTORY teardown.py` (see README.md).

Removes the stacks, secrets, configs and networks this project created, makes every node leave (workers
first, managers last) and removes this project's firewall rules; `docker_purge: true` also uninstalls Docker
and deletes its data. A second run changes nothing; `deploy.py` afterwards builds the cluster again.
"""

from pyinfra_swarm.deploys.teardown import teardown
from pyinfra_swarm.plan import plan_cluster

teardown(plan_cluster(build=False))
