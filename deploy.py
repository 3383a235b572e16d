"""Provision a Docker Swarm cluster: `pyinfra INVENTORY deploy.py` (see README.md)."""

from pyinfra import host
from pyinfra.facts.server import Hostname, Os

host.get_fact(Hostname)
host.get_fact(Os)
