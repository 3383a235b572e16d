"""Settings for every host (see src/pyinfra_swarm/settings.py for all keys and their defaults)."""

# Debian/Ubuntu's docker.io: the lab's nodes reach only Debian's mirror. Use "docker-ce" for Docker's own
# packages from download.docker.com (the default when unset).
docker_source = "distro"

docker_daemon_config = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
}

# Firewall: the swarm ports open to cluster peers only; everything else inbound refused but SSH.
swarm_firewall = "auto"
swarm_firewall_allow = ["22/tcp"]
