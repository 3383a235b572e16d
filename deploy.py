"""Provision a Docker Swarm cluster and its services: `pyinfra INVENTORY deploy.py` (see README.md).

Each step reads its settings from group_data/ and host data; a second run changes nothing.
"""

from pyinfra_swarm.artifacts import build_images, load_image_archives
from pyinfra_swarm.daemon import configure_daemon
from pyinfra_swarm.firewall import configure_firewall
from pyinfra_swarm.install import install_docker
from pyinfra_swarm.objects import configure_objects, prune_objects
from pyinfra_swarm.preflight import preflight
from pyinfra_swarm.registry import configure_registry
from pyinfra_swarm.stacks import deploy_stacks
from pyinfra_swarm.swarm import configure_nodes, join_swarm

# The cluster.
preflight()
configure_daemon()
install_docker()
configure_firewall()
join_swarm()
configure_nodes()

# What runs on it.
load_image_archives()
configure_registry()
build_images()
configure_objects()
deploy_stacks()
prune_objects()
