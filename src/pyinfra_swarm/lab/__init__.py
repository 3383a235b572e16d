"""The local lab: VM-like nodes (systemd + sshd) as containers on one Docker engine."""

from pyinfra_swarm.lab.spec import LabError, LabSpec

__all__ = ["LabError", "LabSpec"]
