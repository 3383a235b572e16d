"""pyinfra-swarm: turn plain Linux machines into a secure Docker Swarm cluster with pyinfra."""

__version__ = "0.1.0"
