"""Provision a Docker Swarm cluster: `pyinfra INVENTORY deploy.py` (see README.md).

Each step reads its settings from group_data/ and host data; a second run changes nothing.
"""

from pyinfra_swarm.daemon import configure_daemon
from pyinfra_swarm.firewall import configure_firewall
from pyinfra_swarm.install import install_docker
from pyinfra_swarm.preflight import preflight
from pyinfra_swarm.swarm import configure_nodes, join_swarm

preflight()
configure_daemon()
install_docker()
configure_firewall()
join_swarm()
configure_nodes()
