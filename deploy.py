"""Provision a Docker Swarm cluster and its services: `pyinfra INVENTORY deploy.py` (see README.md).

Each step reads its settings from group_data/ and host data; a second run changes nothing. The steps, in
order, are in `pyinfra_swarm.deploys.cluster.swarm_cluster`; compose them yourself to run only some.
"""

from pyinfra_swarm.deploys.cluster import swarm_cluster

swarm_cluster()
