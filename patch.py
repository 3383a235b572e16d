"""Patch the nodes' operating system, one node at a time: `pyinfra INVENTORY patch.py` (see README.md,
*OS patching and reboots*).

Each node with packages to upgrade, or a reboot to do, takes its turn: drained through a manager, upgraded (the
Docker engine's packages keep their versions), rebooted when it asks for one (`patch_reboot`), and waited for
until it is back in the swarm with its services; managers first, then workers. `--limit` patches a subset.
"""

from pyinfra_swarm.deploys.patch import patch_cluster

patch_cluster()
