"""Inventory of the local lab, as written by `pyinfra-swarm lab up`.

    pyinfra inventory/lab.py deploy.py

PYINFRA_SWARM_LAB picks a lab other than `lab`; PYINFRA_SWARM_LAB_USER=debian connects as the lab's
non-root sudo user instead of root.
"""

import os
from pathlib import Path

from pyinfra_swarm.lab.inventory import lab_groups

_root = Path(os.environ.get("PYINFRA_SWARM_LAB_DIR", Path(__file__).resolve().parent.parent / ".lab"))
_groups = lab_groups(
    _root / os.environ.get("PYINFRA_SWARM_LAB", "lab"), user=os.environ.get("PYINFRA_SWARM_LAB_USER", "root")
)

swarm_managers = _groups["swarm_managers"]
swarm_workers = _groups["swarm_workers"]
container_lab = _groups["container_lab"]  # group_data/container_lab.py: what a container lab's kernel needs
