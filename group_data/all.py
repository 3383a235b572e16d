"""Settings for every host (src/pyinfra_swarm/settings.py lists every key with its default).

These are the demo's settings on the local lab; for your own cluster, change what is marked "lab".
"""

import os

# Debian/Ubuntu's docker.io (lab: the nodes reach only Debian's mirror). Use "docker-ce" for Docker's own
# packages from download.docker.com (the default when unset).
docker_source = "distro"

docker_daemon_config = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
}

# Firewall: the swarm ports open to cluster peers only; every other inbound connection refused but SSH and
# the ports listed here, which also decide which published ports of services non-peers may reach (the demo's
# web port; the registry's port stays for peers only).
swarm_firewall = "auto"
swarm_firewall_allow = ["22/tcp", "8080/tcp"]

# The cluster's registry: a swarm service on manager1, TLS from a CA made on this machine, and htpasswd auth
# with a user whose password is generated there too (~/.local/share/pyinfra-swarm/pki, never in the repo).
registry_mode = "service"
registry_node = "manager1"
# Lab: nothing can be pulled, so the registry image is built from Debian's docker-registry package on its
# node (use registry_image = "registry:2" and no registry_build where Docker Hub is reachable).
registry_image = "pyinfra-swarm/registry:2.8"
registry_build = "images/registry"

# Lab: managers build images FROM debian:bookworm, which `pyinfra-swarm lab up` (and `vagrant up` with the
# local box) export to this archive where nothing can be pulled; with no archive there, it is pulled.
_base_archive = os.path.join(os.environ.get("PYINFRA_SWARM_LAB_DIR", ".lab"), "images", "debian-bookworm.tar")
docker_image_archives = [
    {"image": "debian:bookworm", "archive": _base_archive, "group": "swarm_managers"},
] if os.path.exists(_base_archive) else []  # fmt: skip
docker_images = [{"name": "demo-app", "context": "images/demo-app", "tag": "1"}]

swarm_stacks = [
    {
        "name": "demo",
        "template": "demo.yml.j2",
        "timeout": 180,
        "vars": {"demo_version": "1", "greeting": "hello", "web_replicas": 3, "web_port": 8080},
    },
]
