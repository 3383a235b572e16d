"""Settings for the workers."""

swarm_labels = {"role": "worker"}
