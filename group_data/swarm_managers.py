"""Settings for the managers."""

swarm_labels = {"role": "manager"}
