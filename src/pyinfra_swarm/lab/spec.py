"""What a lab is made of: its name, its nodes and their addresses, checked before anything is created."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

LABEL = "pyinfra-swarm.lab"
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?$")
DEFAULT_NAME = "lab"
# Addresses below .10 of a lab subnet are left for the gateway and the host.
FIRST_HOST_OFFSET = 9
# Lab subnets are picked from VirtualBox's host-only range: clear of swarm's 10.0.0.0/8 address pool and of
# the nodes' own docker0 / docker_gwbridge (172.17-18.x).
AUTO_SUBNETS = [f"192.168.{third}.0/24" for third in range(56, 64)]


class LabError(Exception):
    """A problem with the lab a user can act on; the message says what to do."""


def state_root() -> Path:
    """Where labs keep their state (SSH key, inventory data): $PYINFRA_SWARM_LAB_DIR or ./.lab."""
    return Path(os.environ.get("PYINFRA_SWARM_LAB_DIR", ".lab")).resolve()


# Debian 12 (docker.io 20.10), 13 (docker.io 26.1) and 14, testing (docker.io 28.5, containerd 2.1)
DISTROS = ("bookworm", "trixie", "forky")
VM_DISTROS = ("bookworm", "trixie")  # the VM lab's images


@dataclass(frozen=True)
class Node:
    name: str  # manager1, worker2, ...
    role: str  # manager or worker
    lab: str
    distro: str = "bookworm"

    @property
    def container(self) -> str:
        return f"pyinfra-swarm-{self.lab}-{self.name}"

    @property
    def hostname(self) -> str:
        return f"{self.lab}-{self.name}"

    @property
    def volume(self) -> str:
        return f"{self.container}-docker"

    @property
    def group(self) -> str:
        return f"swarm_{self.role}s"


@dataclass(frozen=True)
class LabSpec:
    name: str = DEFAULT_NAME
    managers: int = 1
    workers: int = 3
    subnet: str | None = None  # None: the first free one of AUTO_SUBNETS
    distro: str = "bookworm"  # the nodes' Debian release (DISTROS)
    worker_distro: str | None = None  # the workers' release, when it differs (a mixed cluster)
    nodes: list[Node] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()
        workers = self.worker_distro or self.distro
        nodes = [Node(f"manager{i}", "manager", self.name, self.distro) for i in range(1, self.managers + 1)]
        nodes += [Node(f"worker{i}", "worker", self.name, workers) for i in range(1, self.workers + 1)]
        object.__setattr__(self, "nodes", nodes)

    @property
    def network(self) -> str:
        return f"pyinfra-swarm-{self.name}"

    @property
    def state_dir(self) -> Path:
        return state_root() / self.name

    def validate(self) -> None:
        if not NAME_RE.match(self.name):
            raise LabError(
                f"invalid lab name {self.name!r}: use 1-24 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit (it becomes part of container and host names)"
            )
        for release in {self.distro, self.worker_distro or self.distro}:
            if release not in DISTROS:
                raise LabError(f"unknown distro {release!r}: use one of {', '.join(DISTROS)}")
        if self.managers < 1:
            raise LabError(f"--managers must be at least 1 (got {self.managers}): a swarm needs a manager")
        if self.workers < 0:
            raise LabError(f"--workers must be 0 or more (got {self.workers})")
        capacity = len(host_addresses(self.subnet or AUTO_SUBNETS[0]))
        if self.managers + self.workers > capacity:
            raise LabError(
                f"{self.managers} managers + {self.workers} workers don't fit subnet "
                f"{self.subnet or AUTO_SUBNETS[0]}: it has room for {capacity} nodes"
            )


def host_addresses(subnet: str) -> list[str]:
    """The addresses lab nodes may take in a subnet (from .10 up)."""
    try:
        network = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise LabError(f"invalid subnet {subnet!r}: {exc}") from None
    if network.version != 4:
        raise LabError(f"invalid subnet {subnet!r}: the lab needs an IPv4 subnet")
    return [str(address) for address in list(network.hosts())[FIRST_HOST_OFFSET:]]
