"""Provision a Docker Swarm cluster and its services: `pyinfra INVENTORY deploy.py` (see README.md).

Each step reads its settings from group_data/ and host data; a second run changes nothing.
"""

from pyinfra_swarm.deploys.artifacts import build_images, load_image_archives
from pyinfra_swarm.deploys.daemon import configure_daemon
from pyinfra_swarm.deploys.firewall import configure_firewall
from pyinfra_swarm.deploys.install import install_docker
from pyinfra_swarm.deploys.objects import configure_objects
from pyinfra_swarm.deploys.preflight import preflight
from pyinfra_swarm.deploys.registry import configure_registry
from pyinfra_swarm.deploys.stacks import deploy_stacks, prune_objects
from pyinfra_swarm.deploys.swarm import configure_nodes, join_swarm, remove_nodes
from pyinfra_swarm.plan import plan_cluster

# The plan: every host's state in one command per host; who inits, who joins through whom, where the
# registry runs. Checks the inventory and all data first: bad input stops the run before any change.
plan = plan_cluster()

# The cluster.
preflight(plan)
remove_nodes(plan)  # hosts with swarm_state: absent, one at a time
configure_daemon(plan)
install_docker(plan)
configure_firewall(plan)
join_swarm(plan)
configure_nodes(plan)

# What runs on it.
load_image_archives(plan)
configure_registry(plan)
build_images(plan)
configure_objects(plan)
deploy_stacks(plan)
prune_objects(plan)
