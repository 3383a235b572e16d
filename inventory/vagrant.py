"""Inventory of the Vagrant lab in vagrant/ (`make vagrant-up` first):

    pyinfra inventory/vagrant.py deploy.py

VMs are grouped by name (managerN, workerN); each advertises its private-network address from
vagrant/settings.yml ($PYINFRA_SWARM_VAGRANT_SETTINGS picks another settings file).
"""

import os
from pathlib import Path

from pyinfra_swarm.vagrant import inventory

_vagrant = Path(__file__).resolve().parent.parent / "vagrant"
_groups = inventory(_vagrant, Path(os.environ.get("PYINFRA_SWARM_VAGRANT_SETTINGS", _vagrant / "settings.yml")))

swarm_managers = _groups["swarm_managers"]
swarm_workers = _groups["swarm_workers"]
