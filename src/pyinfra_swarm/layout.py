"""Where pyinfra-swarm keeps things on the nodes, and the packages it installs and removes."""

from __future__ import annotations

from pyinfra_swarm.facts import STATE_DIR
from pyinfra_swarm.operations.packages import source_paths

STACKS_DIR = f"{STATE_DIR}/stacks"

# Docker's packages and the ones they conflict with (Docker's install guide lists these).
DOCKER_CE_PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"]
APT_CONFLICTS = [
    "docker.io", "docker-cli", "docker-doc", "docker-compose", "docker-compose-v2", "podman-docker", "containerd",
    "runc",
]  # fmt: skip
DNF_CONFLICTS = [
    "docker", "docker-client", "docker-client-latest", "docker-common", "docker-latest", "docker-latest-logrotate",
    "docker-logrotate", "docker-engine", "podman", "runc", "moby-engine",
]  # fmt: skip
PACKAGES = sorted(set(DOCKER_CE_PACKAGES + APT_CONFLICTS + DNF_CONFLICTS + ["apparmor", "curl", "ca-certificates"]))
DOCKER_APT_SOURCE, DOCKER_APT_KEY = source_paths("docker")
# What a purge removes, and what OS patching leaves at its version.
ENGINE_PACKAGES = sorted(set([*DOCKER_CE_PACKAGES, "docker.io", "docker-cli", "containerd", "runc"]))


def stack_path(name: str) -> str:
    """Where a stack's rendered file lives on the acting manager."""
    return f"{STACKS_DIR}/{name}.yml"


def ca_path(registry: str) -> str:
    """Where a node trusts the registry's CA."""
    return f"/etc/docker/certs.d/{registry}/ca.crt"
